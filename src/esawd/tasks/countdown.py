"""Countdown (target task, paper Sec. 4): combine the given numbers into the target.

Reference: `kschweig/es-awd`, `tasks/countdown/{template,data,reward_function}.py`.

Prompt: system message, user message with the numbers as a Python list, and the assistant
prefill "Let me solve this step by step.\\n<think>"; the completion is the text after it.

Reward = 0.1 * format + answer, as in the reference:
- format is scored on "<think>" + completion: 1.0 if it is
  `<think>...</think>\\n<answer>...</answer>` (a trailing newline allowed), else 0.1 if a
  `</think>` closes the think block plus 0.5 if some `<answer>...</answer>` pair exists.
- answer is 1.0 if the last `<answer>...</answer>` holds only digits, `+ - * / ( )` and spaces
  (one trailing newline allowed), uses exactly the given numbers (as a multiset), and its value
  is within 1e-5 of the target.

Differences from the reference, all for safety:
- The answer is evaluated by `esawd.tasks.arith.evaluate`, never by `eval`. Exponentiation
  (`**`), which the reference's filter admits and the prompt does not allow, scores 0; so do
  answers nested deeper than 64 levels or longer than 512 tokens. Division by zero scores 0
  (the reference also gives 0).
- Tag matching uses linear scans instead of regexes that are quadratic on unclosed tags.

Data: the reference's `countdown.json` (first 200 rows train, the rest test) or its verl-style
`train.parquet` / `test.parquet`; `generate` makes a seeded procedural set with no download,
whose train and test splits never share an instance.
In the published test split 19 rows have no solution and 15 have a solution that reuses a
number; their targets are kept as published.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from pathlib import Path

from esawd.tasks import arith, data, procedural, text
from esawd.tasks.base import (
    Example,
    Message,
    Reward,
    Task,
    make_reward,
    too_long,
    verl_prompt,
    zero_reward,
)

SYSTEM_MESSAGE = (
    "You are a helpful assistant. You first think about the reasoning process in your mind "
    "and then provide the user with the answer."
)
USER_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work "
    "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for "
    "example <answer> (1 + 2) / 3 </answer>."
)
PREFILL = "Let me solve this step by step.\n<think>"
FORMAT_WEIGHT = 0.1
TOLERANCE = 1e-5
JSON_TRAIN_SIZE = 200  # countdown.json: the first 200 rows are the training split

# The reference's character filter; `re.match(...$)` also admits one trailing newline.
_ALLOWED = re.compile(r"[0-9+\-*/() ]+\n?")
_DIGIT_RUN = re.compile(r"[0-9]+")


def format_reward(completion: str) -> float:
    """1.0 for <think>..</think>\\n<answer>..</answer>, else 0.1 * closed think + 0.5 * answer."""
    response = "<think>" + completion
    # `$` in the reference's regex also matches before one final newline.
    end = len(response) - 1 if response.endswith("\n") else len(response)
    for stop in {len(response), end}:
        body = response[:stop]
        if body.endswith("</answer>"):
            sep = body.find("</think>\n<answer>", len("<think>"))
            if 0 <= sep and sep + len("</think>\n<answer>") <= stop - len("</answer>"):
                return 1.0
    reward = 0.0
    if text.has_tag_pair(response, "<think>", "</think>"):
        reward += 0.1
    if text.has_tag_pair(response, "<answer>", "</answer>"):
        reward += 0.5
    return reward


def _same_numbers(expression: str, numbers: list[int]) -> bool:
    """Whether the integer literals in `expression` are exactly `numbers`, as multisets."""
    runs = _DIGIT_RUN.findall(expression)
    if len(runs) != len(numbers):
        return False
    # Compare digit strings without int(): a megabyte-long run must not be converted.
    used = sorted(r.lstrip("0") or "0" for r in runs)
    return used == sorted(str(int(n)) for n in numbers)


def answer_reward(completion: str, numbers: list[int], target: str | float) -> float:
    """1.0 if the last <answer> uses exactly `numbers` and evaluates to `target`, else 0.0."""
    content = text.last_tag_content(completion, "<answer>", "</answer>")
    if not content or not _ALLOWED.fullmatch(content):
        return 0.0
    if not _same_numbers(content, numbers):
        return 0.0
    value = arith.evaluate(content.removesuffix("\n"))
    try:
        goal = float(target)
    except (TypeError, ValueError):
        return 0.0
    return 1.0 if value is not None and abs(value - goal) < TOLERANCE else 0.0


def reward(completion: str, numbers: list[int], target: str | float) -> Reward:
    """The Countdown reward of a completion (the text after the prefill)."""
    if too_long(completion):
        return zero_reward()
    fmt = format_reward(completion)
    ans = answer_reward(completion, numbers, target)
    return make_reward(fmt, ans, format_weight=FORMAT_WEIGHT)


def render_messages(numbers: list[int], target: str) -> list[Message]:
    """System, user and assistant-prefill messages for one Countdown instance."""
    user = USER_TEMPLATE.format(numbers=[int(n) for n in numbers], target=target)
    return [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": user},
        {"role": "assistant", "content": PREFILL},
    ]


# ----- procedural generator -----------------------------------------------------------------

_OPS = ("+", "-", "*", "/")


def _combine(a: Fraction, b: Fraction, op: str) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _propose(
    rng: random.Random, *, min_count: int, max_count: int, max_number: int, max_target: int
) -> tuple[str, Example] | None:
    """One candidate instance and its key (the sorted numbers and the target), or None."""
    count = rng.randint(min_count, max_count)
    numbers = [rng.randint(1, max_number) for _ in range(count)]
    # Combine the numbers in a random order and tree shape, like the reference's data:
    # repeatedly merge two random operands into a parenthesised sub-expression.
    pool = [(Fraction(n), str(n)) for n in rng.sample(numbers, count)]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (a, sa), (b, sb) = pool[i], pool[j]
        op = rng.choice(_OPS)
        value = _combine(a, b, op)
        if value is None:
            return None
        pool = [p for k, p in enumerate(pool) if k not in (i, j)]
        pool.append((value, f"({sa} {op} {sb})"))
    value, solution = pool[0]
    # Integer targets in [1, max_target] keep the task well-posed and the prompt short.
    if value.denominator != 1 or not 1 <= value <= max_target:
        return None
    key = f"{sorted(numbers)}->{int(value)}"
    return key, {"numbers": numbers, "target": str(int(value)), "solution": solution}


def generate(
    num_examples: int,
    *,
    seed: int,
    split: str = "train",
    min_count: int = 3,
    max_count: int = 4,
    max_number: int = 99,
    max_target: int = 999,
) -> list[Example]:
    """Seeded Countdown instances of `split`, solvable by construction, each with its
    solution; no instance (numbers and target) is in both splits (`procedural.draw`)."""
    if not 2 <= min_count <= max_count:
        raise ValueError(f"need 2 <= min_count <= max_count, got {min_count}, {max_count}")
    return procedural.draw(
        lambda rng: _propose(
            rng, min_count=min_count, max_count=max_count, max_number=max_number,
            max_target=max_target,
        ),
        num_examples, seed=seed, split=split, name="countdown",
    )  # fmt: skip


# ----- task -------------------------------------------------------------------------------


class Countdown(Task):
    """Countdown: splits train/test of the reference's data, or `generate` for a seeded set."""

    name = "countdown"
    splits = ("train", "test")
    is_target = True
    hub = None  # the reference's countdown.json ships with its code, not on the hub
    local_extra_names = ("countdown.json",)

    def rows_from_files(self, files: list[Path], split: str) -> list[data.Row]:
        """The split's rows; countdown.json holds both splits (train = its first 200 rows)."""
        if files[0].name == "countdown.json":
            rows = data.read_rows(files[0])
            return rows[:JSON_TRAIN_SIZE] if split == "train" else rows[JSON_TRAIN_SIZE:]
        return super().rows_from_files(files, split)

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example {id, numbers, target, solution[, prompt]} from a json or verl row."""
        prompt = verl_prompt(row)
        fields = (row.get("extra_info") or {}) if prompt is not None else row
        numbers = fields.get("numbers", fields.get("nums"))
        if numbers is None or fields.get("target") is None:
            raise ValueError(f"Countdown row {index} of {split} has no numbers/target: {row!r}")
        example: Example = {
            "id": row.get("id", f"{split}-{index}"),
            "numbers": [int(n) for n in numbers],
            "target": str(fields["target"]),
            "solution": fields.get("solution"),
        }
        if prompt is not None:
            example["prompt"] = prompt
        return example

    def generate(self, num_examples: int, *, seed: int, split: str = "train") -> list[Example]:
        """Seeded procedural examples of `split` (3-4 numbers, solvable by construction)."""
        return generate(num_examples, seed=seed, split=split)

    def render_messages(self, example: Example) -> list[Message]:
        """System, user and prefill messages from the example's numbers and target."""
        return render_messages(example["numbers"], example["target"])

    def reward(self, completion: str, example: Example) -> Reward:
        """0.1 * format + answer for the completion after the prefill."""
        return reward(completion, example["numbers"], example["target"])
