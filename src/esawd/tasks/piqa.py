"""PIQA (prior task, paper Sec. 4): pick the better of two solutions to a physical goal.

Reference: `kschweig/es-awd`, `prior_tasks/piqa/{template,data,reward_function,
create_parquet_exports}.py`.

Prompt: a system message asking for the option number only, and a user message with the goal
and solutions numbered 1-2; the model starts a fresh assistant turn.

Reward = answer, as in the reference: answer is 1.0 if the first standalone digit 1 or 2
(`\\b[12]\\b`) equals the label; format (reported only) is 1.0 if the completion is just that
digit, with whitespace around it. No differences from the reference.

Labels are "1"/"2" as in the reference's parquet export; hub and TFDS rows carry 0/1 ints and
are shifted by one, exactly as the reference's export script does. Only `validation` has
public labels.
"""

from __future__ import annotations

import re

from esawd.tasks import data
from esawd.tasks.base import (
    Choices,
    Example,
    Message,
    Reward,
    Task,
    make_reward,
    too_long,
    zero_reward,
)

SYSTEM_MESSAGE = (
    "You are given a physical commonsense goal and two possible solutions. Choose the better "
    "solution by selecting the corresponding number. Reply with only the option number: 1 or 2."
)
USER_TEMPLATE = (
    "Goal: {goal}\n\n"
    "Possible solutions:\n"
    "1. {solution_1}\n"
    "2. {solution_2}\n\n"
    "Which solution is more likely to work?"
)
LABELS = ("1", "2")
_FIRST_LABEL = re.compile(r"\b([12])\b")


def reward(completion: str, answer: str) -> Reward:
    """Answer: first standalone 1/2 equals the label; format: the completion is only that digit."""
    if too_long(completion):
        return zero_reward()
    match = _FIRST_LABEL.search(completion)
    correct = match is not None and match.group(1) == str(answer)
    strict = completion.strip() in LABELS
    return make_reward(float(strict), float(correct), format_weight=0.0)


def label_from_row(label: object) -> str:
    """'1' or '2': exported labels are kept, 0/1 class indices (hub, TFDS) are shifted by one."""
    if isinstance(label, str):
        if label not in LABELS:
            raise ValueError(f"PIQA label {label!r} is not '1' or '2'")
        return label
    if label not in (0, 1):
        raise ValueError(f"PIQA label {label!r} is not 0 or 1 (test labels are hidden)")
    return str(int(label) + 1)


def render_messages(goal: str, sol1: str, sol2: str) -> list[Message]:
    """System and user messages for one PIQA item."""
    user = USER_TEMPLATE.format(goal=goal, solution_1=sol1, solution_2=sol2)
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user}]


class PIQA(Task):
    """PIQA: split validation; examples {id, goal, sol1, sol2, answer}."""

    name = "piqa"
    splits = ("validation",)
    hub = ("ybisk/piqa", None)
    tfds_name = "piqa"

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example from an exported row (label '1'/'2') or a hub/TFDS row (label 0/1)."""
        return {
            "id": row.get("id", index),
            "goal": row["goal"],
            "sol1": row["sol1"],
            "sol2": row["sol2"],
            "answer": label_from_row(row["label"]),
        }

    def render_messages(self, example: Example) -> list[Message]:
        """System and user messages from the example's fields."""
        return render_messages(example["goal"], example["sol1"], example["sol2"])

    def reward(self, completion: str, example: Example) -> Reward:
        """Answer reward only; format is reported."""
        return reward(completion, example["answer"])

    def choices(self, example: Example) -> Choices:
        """The goal as a question, the two solutions as answers (lm-evaluation-harness)."""
        return Choices(
            f"Question: {example['goal']}\nAnswer:",
            (example["sol1"], example["sol2"]),
            LABELS.index(example["answer"]),
        )
