"""HellaSwag (prior task, paper Sec. 4): pick the most plausible of four endings.

Reference: `kschweig/es-awd`, `prior_tasks/hellaswag/{template,data,reward_function}.py`.

Prompt: a system message asking for the option number only, and a user message with the
activity, context and endings numbered 0-3; the model starts a fresh assistant turn.

Reward = answer, as in the reference: answer is 1.0 if the first character 0-3 anywhere in the
completion equals the label; format (reported only) is 1.0 if the completion is just that
digit, with whitespace around it. No differences from the reference.

Data: `validation` of the hub's `Rowan/hellaswag` (ind, activity_label, ctx, endings, label),
as parquet shards in a local data dir, from the hub, or from TFDS `hellaswag` (where the
context is called `context` and the label is an int). The test split's labels are hidden, so
only `validation` is offered.
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
    "You are given a situation followed by four possible endings. Choose the most appropriate "
    "ending by selecting the corresponding number. Reply with only the option number: 0, 1, 2, "
    "or 3."
)
USER_TEMPLATE = (
    "Activity: {activity_label}\n"
    "Context: {context}\n\n"
    "Possible endings:\n"
    "0. {ending_0}\n"
    "1. {ending_1}\n"
    "2. {ending_2}\n"
    "3. {ending_3}\n\n"
    "Which ending best completes the scenario?"
)
LABELS = ("0", "1", "2", "3")
_FIRST_LABEL = re.compile(r"[0-3]")


def reward(completion: str, answer: str) -> Reward:
    """Answer: first digit 0-3 equals the label; format: the completion is only that digit."""
    if too_long(completion):
        return zero_reward()
    match = _FIRST_LABEL.search(completion)
    correct = match is not None and match.group(0) == str(answer)
    strict = completion.strip() in LABELS
    return make_reward(float(strict), float(correct), format_weight=0.0)


def render_messages(activity_label: str, context: str, endings: list[str]) -> list[Message]:
    """System and user messages for one HellaSwag item."""
    if len(endings) != 4:
        raise ValueError(f"HellaSwag items have 4 endings, got {len(endings)}")
    user = USER_TEMPLATE.format(
        activity_label=activity_label,
        context=context,
        **{f"ending_{i}": ending for i, ending in enumerate(endings)},
    )
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user}]


class HellaSwag(Task):
    """HellaSwag: split validation; examples {id, activity_label, context, endings, answer}."""

    name = "hellaswag"
    splits = ("validation",)
    hub = ("Rowan/hellaswag", None)
    tfds_name = "hellaswag"

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example from a hub row (ctx, label str) or a TFDS row (context, label int)."""
        context = row["ctx"] if "ctx" in row else row["context"]
        return {
            "id": row.get("ind", index),
            "activity_label": row["activity_label"],
            "context": context,
            "endings": list(row["endings"]),
            "answer": str(row["label"]),
        }

    def render_messages(self, example: Example) -> list[Message]:
        """System and user messages from the example's fields."""
        return render_messages(example["activity_label"], example["context"], example["endings"])

    def reward(self, completion: str, example: Example) -> Reward:
        """Answer reward only; format is reported."""
        return reward(completion, example["answer"])

    def choices(self, example: Example) -> Choices:
        """The activity and context, the four endings as continuations (lm-evaluation-harness
        without its bracket clean-up)."""
        return Choices(
            f"{example['activity_label']}: {example['context']}",
            tuple(example["endings"]),
            int(example["answer"]),
        )
