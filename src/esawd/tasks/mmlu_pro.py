"""MMLU-Pro (prior task, paper Sec. 4): ten-option professional knowledge, 5-shot CoT.

Reference: `kschweig/es-awd`, `prior_tasks/mmlu_pro/{template,data,reward_function}.py`.

Prompt: a system message and a user message: the header naming the category, then the first
five validation examples of the same category (question, lettered options, `Answer: ` and
their chain of thought), then the question with a final `Answer:`; the model starts a fresh
assistant turn. Reward: see `esawd.tasks.choice` (letters A-J).

`load("test")` also reads the validation split from the same source and attaches each test
example's shots under "few_shot"; `messages` only reads the example. The reference never builds
prompts for validation examples; here they get the other validation examples of their category
(at most five, the example itself excluded) so no prompt contains its own answer.

Data: `TIGER-Lab/MMLU-Pro` (question_id, question, options, answer, answer_index, cot_content,
category, src), as parquet shards in a local data dir or from the hub.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from esawd.tasks import choice, data
from esawd.tasks.base import Choices, Example, Message, Reward, Task

SYSTEM_MESSAGE = (
    "You are a knowledge expert solving multiple-choice questions. Think step by step and "
    'finish your answer with "The answer is (X)" where X is the correct letter choice.'
)
HEADER_TEMPLATE = (
    "The following are multiple choice questions (with answers) about {category}. Think step "
    'by step and then finish your answer with "The answer is (X)" where X is the correct '
    "letter choice.\n\n"
)
LETTERS = "ABCDEFGHIJ"
NUM_SHOTS = 5


def _question_block(example: Example) -> str:
    options = choice.format_options(list(LETTERS[: len(example["options"])]), example["options"])
    return f"Question: {example['question']}\nOptions:\n{options}\n"


def render_messages(example: Example, shots: list[Example]) -> list[Message]:
    """System and user messages: header, the shots with their reasoning, then the question."""
    body = HEADER_TEMPLATE.format(category=example["category"])
    body += "\n".join(f"{_question_block(s)}Answer: {s['cot_content']}\n" for s in shots)
    body += f"\n{_question_block(example)}Answer:"
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": body}]


def attach_shots(
    examples: list[Example], pool: list[Example], *, num_shots: int = NUM_SHOTS
) -> None:
    """Set example["few_shot"] to the first `num_shots` same-category pool examples but itself."""
    by_category: dict[str, list[Example]] = defaultdict(list)
    for shot in pool:
        by_category[shot["category"]].append(shot)
    for example in examples:
        same = by_category.get(example["category"], [])
        example["few_shot"] = [s for s in same if s is not example][:num_shots]


class MMLUPro(Task):
    """MMLU-Pro: splits validation/test; examples {id, question, options, answer, answer_index,
    cot_content, category, src, few_shot}."""

    name = "mmlu_pro"
    splits = ("validation", "test")
    hub = ("TIGER-Lab/MMLU-Pro", None)

    def load(
        self, split: str, data_dir: str | Path | None = None, *, source: str = "auto"
    ) -> list[Example]:
        """Every example of `split`, each with its few-shot examples from `validation`."""
        examples = super().load(split, data_dir, source=source)
        pool = (
            examples
            if split == "validation"
            else super().load("validation", data_dir, source=source)
        )
        attach_shots(examples, pool)
        return examples

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example from a hub-schema row."""
        return {
            "id": row.get("question_id", index),
            "question": row["question"],
            "options": list(row["options"]),
            "answer": str(row["answer"]),
            "answer_index": int(row["answer_index"]),
            "cot_content": row.get("cot_content") or "",
            "category": row["category"],
            "src": row.get("src", ""),
        }

    def render_messages(self, example: Example) -> list[Message]:
        """System and user messages; the shots come from example["few_shot"] (see `load`)."""
        return render_messages(example, example.get("few_shot", []))

    def reward(self, completion: str, example: Example) -> Reward:
        """Answer reward only; format ('The answer is (X)' at the end) is reported."""
        return choice.reward(completion, example["answer"], letters=LETTERS)

    def choices(self, example: Example) -> Choices:
        """The question, the option texts as answers (no shots, no letters)."""
        return Choices(
            f"Question: {example['question']}\nAnswer:",
            tuple(example["options"]),
            LETTERS.index(example["answer"]),
        )
