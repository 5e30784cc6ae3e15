"""The seven benchmarks of the paper (Sec. 4): three target tasks trained on (Countdown,
GSM8K, ProofWriter) and four prior tasks that measure forgetting (HellaSwag, PIQA,
ARC-Challenge, MMLU-Pro), with prompts and rewards that mean what the reference's do
(`kschweig/es-awd`, `tasks/` and `prior_tasks/`), safe answer checking and data loading.
Two procedural target tasks need no download: `arithmetic` (word problems with GSM8K's prompt
and reward) and `rules` (ProofWriter-style theories with ProofWriter's), each with a held-out
split that never overlaps its training split (`esawd.tasks.procedural`).

    task = get_task("countdown")
    examples = task.load("test", data_dir="../shared/data")
    generated = get_task("rules").generate(64, seed=0, split="test")   # procedural: no files
    task.reward(completion, examples[0])  # {"reward", "format_reward", "answer_reward"}

Your own task (`esawd.tasks.user`): `resolve_task` turns what the settings name into a task,
a built-in name, `jsonl` with a path and a checker (`TaskSpec`), or an import path:

    resolve_task("gsm8k")                                      # get_task("gsm8k")
    resolve_task(TaskSpec("jsonl", path="data/qa", checker="numeric"))
    resolve_task("jsonl:data/qa.jsonl")                         # checker exact
    resolve_task("my_tasks:make_task")                          # any object with the protocol

Nothing here imports JAX or Flax; tokenizing prompts into batches for the sampler is
`esawd.prompts.encode_prompts`.

See docs/tasks.md for each task's prompt, reward and the few places we differ from the
reference.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from esawd.tasks.arc_challenge import ARCChallenge
from esawd.tasks.arithmetic import Arithmetic
from esawd.tasks.base import Example, Message, Reward, Task
from esawd.tasks.countdown import Countdown
from esawd.tasks.gsm8k import GSM8K
from esawd.tasks.hellaswag import HellaSwag
from esawd.tasks.mmlu_pro import MMLUPro
from esawd.tasks.piqa import PIQA
from esawd.tasks.proofwriter import ProofWriter
from esawd.tasks.rules import Rules
from esawd.tasks.user import (
    IMPORT_PATH,
    ImportedTask,
    JsonlTask,
    TaskDataError,
    TaskSpecError,
)

__all__ = [
    "ALL_EXAMPLES",
    "EVAL_SUBSET_SEED",
    "EVAL_SUBSET_SIZE",
    "PRIOR_TASKS",
    "PROCEDURAL_TASKS",
    "TARGET_TASKS",
    "TASK_NAMES",
    "USER_KEYS",
    "Example",
    "ImportedTask",
    "JsonlTask",
    "Message",
    "Reward",
    "Task",
    "TaskDataError",
    "TaskSpec",
    "TaskSpecError",
    "eval_subset",
    "get_task",
    "resolve_task",
    "spec_kind",
]

_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Countdown(),
        GSM8K(),
        ProofWriter(),
        HellaSwag(),
        PIQA(),
        ARCChallenge(),
        MMLUPro(),
        Arithmetic(),
        Rules(),
    )
}
TASK_NAMES = tuple(_TASKS)
PROCEDURAL_TASKS = tuple(name for name, task in _TASKS.items() if task.procedural)
TARGET_TASKS = tuple(name for name, task in _TASKS.items() if task.is_target)
PRIOR_TASKS = tuple(name for name, task in _TASKS.items() if not task.is_target)

# The reference's forgetting evaluation (evaluation/evaluate_forgetting.py) scores at most
# 2048 examples per task, drawn with random.Random(2357).sample.
EVAL_SUBSET_SIZE = 2048
EVAL_SUBSET_SEED = 2357
# A size meaning "every example" (eval.num_examples=-1: the whole test split, as the
# reference's es.py evaluates during training).
ALL_EXAMPLES = -1

T = TypeVar("T")


def get_task(name: str) -> Task:
    """The task called `name`; raises a ValueError listing the valid names otherwise."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}.") from None


# The task settings only a `jsonl` task uses.
USER_KEYS = ("path", "checker", "system_prompt", "template", "prefill")
JSONL = "jsonl"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What names a task in the settings (`task.*` keys): a built-in name, "jsonl" with a
    path (a file or a folder of split files), a checker and prompt options, or an import
    path "package.module:factory"."""

    name: str
    path: str = ""
    checker: str = ""  # "" = exact
    system_prompt: str = ""
    template: str = ""
    prefill: str = ""

    @classmethod
    def of(cls, value: Any) -> TaskSpec:
        """A spec from a TaskSpec, a string (a name, "jsonl:PATH" or an import path), a
        mapping (config.json's task section) or an object with the keys (TaskSettings)."""
        if isinstance(value, TaskSpec):
            return value
        if isinstance(value, str):
            if value.startswith(JSONL + ":"):
                return cls(JSONL, path=value[len(JSONL) + 1 :])
            return cls(value)
        get = value.get if isinstance(value, Mapping) else lambda k, d: getattr(value, k, d)
        return cls(**{f.name: str(get(f.name, "") or "") for f in dataclasses.fields(cls)})


def spec_kind(name: str) -> str | None:
    """ "builtin", "jsonl" (also "jsonl:PATH"), "import" ("module:object") or None."""
    if name in _TASKS:
        return "builtin"
    if name == JSONL or name.startswith(JSONL + ":"):
        return "jsonl"
    return "import" if IMPORT_PATH.fullmatch(name) else None


def resolve_task(spec: Any) -> Task:
    """The task a spec names (`TaskSpec.of` reads it): a built-in task, a JsonlTask, or the
    object an import path names wrapped in an ImportedTask; TaskSpecError (a ValueError whose
    `key` is the setting at fault) otherwise. Reads no data: bad rows fail in `load`."""
    spec = TaskSpec.of(spec)
    kind = spec_kind(spec.name)
    if kind is None:
        raise TaskSpecError(
            f"Unknown task {spec.name!r}; valid tasks: {', '.join(TASK_NAMES)}, or "
            "'jsonl' with a path (jsonl:PATH), or an import path 'package.module:factory'."
        )
    if kind == "jsonl":
        if not spec.path:
            raise TaskSpecError(
                "task 'jsonl' needs a path: task.path (or jsonl:PATH) names a .jsonl or "
                ".parquet file or a folder with train.jsonl and test.jsonl",
                key="path",
            )
        return JsonlTask(
            spec.path, checker=spec.checker, system_prompt=spec.system_prompt,
            template=spec.template, prefill=spec.prefill,
        )  # fmt: skip
    extra = [k for k in USER_KEYS if getattr(spec, k)]
    if extra:
        raise TaskSpecError(
            f"task.{extra[0]} is set, but only task.name='jsonl' uses it; "
            f"{spec.name!r} builds its own prompts and rewards",
            key=extra[0],
        )
    return _TASKS[spec.name] if kind == "builtin" else ImportedTask(spec.name)


def eval_subset(
    examples: Sequence[T], *, size: int | None = EVAL_SUBSET_SIZE, seed: int = EVAL_SUBSET_SEED
) -> list[T]:
    """The reference's evaluation subset: all examples if size is None, ALL_EXAMPLES or
    >= len, else a seeded random.Random(seed).sample of `size` of them (same indices, same
    order)."""
    if size is None or size == ALL_EXAMPLES or size >= len(examples):
        return list(examples)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    indices = random.Random(seed).sample(range(len(examples)), k=size)
    return [examples[i] for i in indices]
