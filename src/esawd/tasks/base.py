"""The task interface shared by the seven benchmarks (paper Sec. 4: three target tasks, four
prior tasks), after the reference's per-task `data.py` / `template.py` / `reward_function.py`.

A task is a stateless object: `load` reads examples (plain dicts), `messages` renders the chat
prompt of one example, `reward` scores a completion. Everything a method needs comes in its
arguments; no method reads globals or environment variables.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from esawd.tasks import data

Example = dict[str, Any]
Message = dict[str, str]
Reward = dict[str, float]

SOURCES = ("auto", "local", "hub", "tfds")

# Completions longer than this score 0 on every component, without being parsed. The paper's
# 1024-token generations stay far below it (about 4 characters per token); the bound keeps
# every reward within a few milliseconds for any input, where the reference parses megabytes
# with regexes (and, for Countdown, `eval`).
MAX_COMPLETION_CHARS = 65_536


def zero_reward() -> Reward:
    """The reward of a completion that cannot be scored (empty or over-long)."""
    return {"reward": 0.0, "format_reward": 0.0, "answer_reward": 0.0}


def too_long(completion: str) -> bool:
    """Whether a completion exceeds MAX_COMPLETION_CHARS (TypeError if it is not a str)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    return len(completion) > MAX_COMPLETION_CHARS


def make_reward(format_reward: float, answer_reward: float, *, format_weight: float) -> Reward:
    """The reward dict: reward = format_weight * format_reward + answer_reward."""
    return {
        "reward": format_weight * format_reward + answer_reward,
        "format_reward": float(format_reward),
        "answer_reward": float(answer_reward),
    }


@dataclasses.dataclass(frozen=True)
class Choices:
    """One multiple-choice item for log-likelihood scoring (`esawd.analysis.likelihood`): the
    plain-text `context` (no chat template), the `options` that may follow it, each read as
    " " + option, and the index of the right one."""

    context: str
    options: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is not an index of {len(self.options)} options")


class Task:
    """Base class: data loading shared by all tasks; subclasses define rows, prompts, rewards."""

    name: str = ""
    splits: tuple[str, ...] = ()
    is_target: bool = False  # target (trained on) or prior (forgetting) task
    hub: tuple[str, str | None] | None = None  # (path, config) on the Hugging Face hub
    tfds_name: str | None = None  # name in the TensorFlow Datasets catalog, if it has one
    local_extra_names: tuple[str, ...] = ()  # more file names to try in a local data dir
    procedural: bool = False  # examples only come from `generate(n, seed=, split=)`

    def __repr__(self) -> str:
        return f"<esawd task {self.name!r}>"

    # ----- data -----------------------------------------------------------------------------

    def load(
        self, split: str, data_dir: str | Path | None = None, *, source: str = "auto"
    ) -> list[Example]:
        """Every example of `split`, in file order, from data_dir (local) or the hub/TFDS."""
        self.check_split(split)
        if self.procedural:
            raise ValueError(
                f"{self.name} is procedural and has no data files: use "
                f"get_task({self.name!r}).generate(num_examples, seed=..., split={split!r})."
            )
        if source not in SOURCES:
            raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
        if source == "auto":
            source = "local" if data_dir is not None else "hub"
        if source == "local":
            if data_dir is None:
                raise ValueError(f"source='local' needs data_dir= (the folder with {self.name}/).")
            rows = self._local_rows(split, data_dir)
        elif source == "hub":
            if self.hub is None:
                hint = " or make a seeded set with generate()" if hasattr(self, "generate") else ""
                raise ValueError(
                    f"{self.name} is not read from the Hugging Face hub; pass data_dir= "
                    f"(the folder that contains '{self.name}/'){hint}."
                )
            rows = data.hub_rows(self.hub[0], self.hub[1], split)
        else:
            if self.tfds_name is None:
                raise ValueError(
                    f"{self.name} is not in the TensorFlow Datasets catalog; use data_dir= "
                    "or source='hub'."
                )
            rows = data.tfds_rows(self.tfds_name, split, data_dir)
        return [self.from_row(row, index=i, split=split) for i, row in enumerate(rows)]

    def generated(self, data_dir: str | Path | None) -> bool:
        """Whether examples come from `generate` rather than files: always for a procedural
        task, and for a task that can generate (Countdown) when no data folder is given."""
        return self.procedural or (not data_dir and hasattr(self, "generate"))

    def check_split(self, split: str) -> None:
        """Raise a ValueError naming the valid splits if `split` is not one of them."""
        if split not in self.splits:
            raise ValueError(
                f"{self.name} has no split {split!r}; valid splits: {', '.join(self.splits)}."
            )

    def _local_rows(self, split: str, data_dir: str | Path) -> list[data.Row]:
        task_dir = data.resolve_task_dir(data_dir, self.name)
        files = data.find_split_files(task_dir, split, extra_names=self.local_extra_names)
        if not files:
            present = sorted(p.name for p in task_dir.iterdir()) if task_dir.is_dir() else []
            raise FileNotFoundError(
                f"No {split!r} split of {self.name} in {task_dir} (looked for {split}.parquet, "
                f"{split}-*.parquet, data/{split}-*.parquet, {split}.jsonl, {split}.json"
                f"{''.join(', ' + n for n in self.local_extra_names)}); files there: {present}. "
                f"Point data_dir at the folder that contains '{self.name}/'."
            )
        return self.rows_from_files(files, split)

    def rows_from_files(self, files: list[Path], split: str) -> list[data.Row]:
        """Concatenated rows of the split's files (tasks with combined files override this)."""
        return [row for path in files for row in data.read_rows(path)]

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """One example from a row in any of the published formats."""
        raise NotImplementedError

    # ----- prompt and reward ----------------------------------------------------------------

    def messages(self, example: Example) -> list[Message]:
        """The chat messages of one example, with the assistant prefill where there is one."""
        stored = example.get("prompt")
        if stored:
            # verl-style files carry the exact prompt the reference trained on; use it as is.
            return [{"role": m["role"], "content": m["content"]} for m in stored]
        return self.render_messages(example)

    def render_messages(self, example: Example) -> list[Message]:
        """The chat messages built from the example's fields with the reference's templates."""
        raise NotImplementedError

    def reward(self, completion: str, example: Example) -> Reward:
        """{"reward", "format_reward", "answer_reward"} for the text generated after the prompt."""
        raise NotImplementedError

    def choices(self, example: Example) -> Choices:
        """The example as a multiple-choice item, for tasks with fixed options (the prior
        tasks: PIQA, ARC-Challenge, MMLU-Pro, HellaSwag)."""
        raise NotImplementedError(
            f"{self.name} has no fixed options to score by log-likelihood; likelihood scoring "
            "works for piqa, arc_challenge, mmlu_pro and hellaswag."
        )

    @property
    def has_choices(self) -> bool:
        return type(self).choices is not Task.choices


def verl_prompt(row: data.Row) -> list[Message] | None:
    """The stored chat prompt of a verl-style row, or None for other formats."""
    prompt = row.get("prompt")
    if isinstance(prompt, list | tuple) and prompt and isinstance(prompt[0], dict):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    return None
