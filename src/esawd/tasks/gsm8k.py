"""GSM8K (target task, paper Sec. 4): grade-school math word problems with a numeric answer.

Reference: `kschweig/es-awd`, `tasks/gsm8k/{data,reward_function,create_parquet_split}.py`.

Prompt: one user message ending "On the last line, write only: #### <number>"; no system
message, no prefill (the model starts a fresh assistant turn).

Reward = 0.1 * format + answer, as in the reference:
- format is 1.0 if the last non-blank line is `#### <number>` (digits, '-', '.', ',').
- answer is 1.0 if the predicted number is within 1e-6 of the ground truth. The prediction is
  read from the last 4096 characters, after the last `</think>` if there is one: the last
  `#### <number>`, else the last `\\boxed{...}`, else the last `<answer>...</answer>`, else the
  first number in that region; commas, `$` and `%` are ignored and `a/b` is a fraction.

Differences from the reference: none in what is scored. The `\\boxed{...}` search, a regex with
three nested whitespace quantifiers in the reference (cubic time on a run of spaces), is a
linear scan here with the same matches.

Data: the reference's verl-style `train.parquet` (first 200 of openai/gsm8k train) and
`test.parquet` (first 500 of its test), or the hub's `openai/gsm8k` (`main`) splits.
"""

from __future__ import annotations

import re
from typing import Any

from esawd.tasks import data, text
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

USER_TEMPLATE = (
    "Solve this grade-school math word problem step by step.\n\n"
    "Problem: {question}\n\n"
    "Write short calculations and check the final result.\n"
    "On the last line, write only: #### <number>"
)
FORMAT_WEIGHT = 0.1
TOLERANCE = 1e-6
SEARCH_CHARS = 4096  # the reference only looks at the tail of long outputs

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FRACTION = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")
_HASHES = re.compile(r"####\s*([\-0-9.,]+)")
_STRICT_LAST_LINE = re.compile(r"####\s*([\-0-9.,]+)")
_BOXED_OPEN = re.compile(r"\\boxed\s*\{", re.IGNORECASE)


def parse_number(value: Any) -> float | None:
    """The reference's numeric reading of an answer: text after '####', fraction or first number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    s = str(value).strip()
    if not s:
        return None
    if "####" in s:
        s = s.rsplit("####", 1)[-1].strip()
    s = s.replace(",", "").replace("$", "").replace("%", "").strip()
    try:
        fraction = _FRACTION.fullmatch(s)
        if fraction:
            denominator = float(fraction.group(2))
            if abs(denominator) < 1e-12:
                return None
            return float(fraction.group(1)) / denominator
        match = _NUMBER.search(s)
        return float(match.group(0)) if match else None
    except (ValueError, OverflowError, ZeroDivisionError):
        return None  # float() of exotic digit strings; never expected, never fatal


def canonical_answer(value: Any) -> str:
    """The ground truth as the reference stores it: '72', '-3', '0.5'."""
    number = parse_number(value)
    if number is None:
        raise ValueError(f"Could not read a GSM8K answer from {value!r}")
    if abs(number - round(number)) < 1e-9:
        return str(int(round(number)))
    return f"{number:.10f}".rstrip("0").rstrip(".")


def _last_boxed(region: str) -> str | None:
    """Content of the last `\\boxed{...}` (case-insensitive), matched left to right."""
    found = None
    pos = 0
    while True:
        opening = _BOXED_OPEN.search(region, pos)
        if opening is None:
            return found
        close = region.find("}", opening.end())
        if close < 0:
            return found  # no later \boxed{ can close either
        found = region[opening.end() : close]
        pos = close + 1


def _search_region(completion: str) -> str:
    tail = completion[-SEARCH_CHARS:]
    return tail.rsplit("</think>", 1)[-1]


def predicted_number(completion: str) -> float | None:
    """The number the completion answers, read as the reference reads it."""
    region = _search_region(completion)
    hashes = _HASHES.findall(region)
    if hashes:
        return parse_number(hashes[-1].strip().replace(",", "").replace("$", ""))
    boxed = _last_boxed(region)
    if boxed is not None:
        return parse_number(boxed.strip().replace(",", "").replace("$", ""))
    tagged = text.last_tag_content(region, "<answer>", "</answer>")
    if tagged is not None:
        return parse_number(tagged.strip())
    return parse_number(region)


def format_reward(completion: str) -> float:
    """1.0 if the last non-blank line is '#### <number>', else 0.0."""
    line = text.last_line(completion)
    if line is None:
        return 0.0
    match = _STRICT_LAST_LINE.fullmatch(line)
    return float(match is not None and parse_number(match.group(1)) is not None)


def reward(completion: str, answer: Any) -> Reward:
    """The GSM8K reward of a completion against the ground-truth answer."""
    if too_long(completion):
        return zero_reward()
    predicted = predicted_number(completion)
    expected = parse_number(answer)
    correct = (
        predicted is not None and expected is not None and abs(predicted - expected) < TOLERANCE
    )
    return make_reward(format_reward(completion), float(correct), format_weight=FORMAT_WEIGHT)


def render_messages(question: str) -> list[Message]:
    """The single user message of the reference's GSM8K prompt."""
    return [{"role": "user", "content": USER_TEMPLATE.format(question=question.strip())}]


class GSM8K(Task):
    """GSM8K: splits train/test; examples {id, question, answer, solution[, prompt]}."""

    name = "gsm8k"
    splits = ("train", "test")
    is_target = True
    hub = ("openai/gsm8k", "main")
    tfds_name = "gsm8k"

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example from a verl row, a hub row or a TFDS row."""
        prompt = verl_prompt(row)
        if prompt is not None:
            extra = row.get("extra_info") or {}
            example: Example = {
                "id": row.get("id", f"{split}-{index}"),
                "question": str(extra.get("question", "")).strip(),
                "answer": canonical_answer(row["reward_model"]["ground_truth"]),
                "solution": extra.get("answer"),
                "prompt": prompt,
            }
            return example
        return {
            # The reference names hub rows "<split>-<index>" when it writes its parquet files.
            "id": row.get("id", f"{split}-{index}"),
            "question": str(row["question"]).strip(),
            "answer": canonical_answer(row["answer"]),
            "solution": row["answer"],
        }

    def render_messages(self, example: Example) -> list[Message]:
        """The user message from the example's question."""
        return render_messages(example["question"])

    def reward(self, completion: str, example: Example) -> Reward:
        """0.1 * format + answer for the completion (a fresh assistant turn)."""
        return reward(completion, example["answer"])
