"""ProofWriter (target task, paper Sec. 4): is a statement True, False or Unknown given a theory?

Reference: `kschweig/es-awd`, `tasks/proofwriter/{data,reward_function,create_parquet_split}.py`.

Prompt: one user message (instructions, theory, question) and the assistant prefill
"Reasoning:"; the completion is the text after it.

Reward = 0.1 * format + answer, as in the reference:
- format is 1.0 if the last non-blank line is exactly `Answer: <word>` (any case, any spacing).
- answer is 1.0 if the predicted label equals the ground truth. The prediction is the last
  line-initial `Answer: <word>`; else, if the last non-blank line is `[Final answer:|is]
  <word>` with optional trailing punctuation, that word; else the last whole word
  true/false/unknown; else the whole completion. Words are read case-insensitively and a
  trailing `.!?,:;` is ignored.

Differences from the reference: none in what is scored. Its `^\\s*answer...` multiline regex
is quadratic on many blank lines; here the leading whitespace may not span a newline, which
finds the same matches (a match starting at an earlier blank line reaches the same word) in
linear time. The last-line regex is replaced by an equivalent linear parse.

Data: the reference's verl-style `train.parquet` / `test.parquet` (200 / 1000 rows drawn from
the hub's `tasksource/proofwriter` train split), or the hub splits themselves.
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
    "You are given a theory and a question. Determine whether the question is entailed by the "
    "theory.\n\n"
    "First write your reasoning.\n"
    "On the last line, write exactly one of these formats:\n"
    "Answer: True\n"
    "Answer: False\n"
    "Answer: Unknown\n"
    "Do not add any other words, punctuation, or explanation after the final label.\n\n"
    "Theory: {theory}\n"
    "Question: {question}"
)
PREFILL = "Reasoning:"
FORMAT_WEIGHT = 0.1
LABELS = {"true": "True", "false": "False", "unknown": "Unknown"}
_TRAILING_PUNCTUATION = ".!?,:;"

# Line-initial "Answer: <word>" followed only by whitespace to the end of its line.
_ANSWER_LINE = re.compile(r"^[^\S\n]*answer\s*:\s*([A-Za-z]+)\s*$", re.IGNORECASE | re.MULTILINE)
_STRICT_LINE = re.compile(r"answer\s*:\s*[A-Za-z]+", re.IGNORECASE)
_PREFIX = re.compile(r"final\s+answer\s*(?::|is)\s*|answer\s*(?::|is)\s*", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+", re.IGNORECASE)
# Searched on the reversed text, so the first hit is the last whole label word.
_LABEL_REVERSED = re.compile(r"\b(eurt|eslaf|nwonknu)\b", re.IGNORECASE)


def canonical_label(value: Any) -> str | None:
    """'True', 'False' or 'Unknown' for a label in any case with trailing punctuation; else None."""
    s = str(value).strip()
    if not s:
        return None
    return LABELS.get(s.rstrip(_TRAILING_PUNCTUATION).strip().lower())


def _lenient_last_line_word(line: str) -> str | None:
    """The word of `[final answer|answer] [:|is] WORD [punct]` spanning the whole line."""
    prefix = _PREFIX.match(line)
    starts = ([prefix.end()] if prefix else []) + [0]
    for start in starts:
        word = _WORD.match(line, start)
        if word is None:
            continue
        tail = line[word.end() :].lstrip().lstrip(_TRAILING_PUNCTUATION)
        if not tail.strip():
            return word.group(0)
    return None


def predicted_label(completion: str) -> str | None:
    """The label the completion answers, read as the reference reads it (None if none)."""
    answers = _ANSWER_LINE.findall(completion)
    if answers:
        return canonical_label(answers[-1])
    line = text.last_line(completion)
    if line:
        word = _lenient_last_line_word(line)
        if word is not None:
            return canonical_label(word)
    label = _LABEL_REVERSED.search(completion[::-1])
    if label:
        return canonical_label(label.group(1)[::-1])
    return canonical_label(completion)


def format_reward(completion: str) -> float:
    """1.0 if the last non-blank line is 'Answer: <word>', else 0.0."""
    line = text.last_line(completion)
    return float(line is not None and _STRICT_LINE.fullmatch(line) is not None)


def reward(completion: str, answer: Any) -> Reward:
    """The ProofWriter reward of a completion against the ground-truth label."""
    if too_long(completion):
        return zero_reward()
    predicted = predicted_label(completion)
    expected = canonical_label(answer)
    correct = predicted is not None and predicted == expected
    return make_reward(format_reward(completion), float(correct), format_weight=FORMAT_WEIGHT)


def render_messages(theory: str, question: str) -> list[Message]:
    """The user message and the 'Reasoning:' prefill."""
    return [
        {"role": "user", "content": USER_TEMPLATE.format(theory=theory, question=question)},
        {"role": "assistant", "content": PREFILL},
    ]


class ProofWriter(Task):
    """ProofWriter: splits train/test; examples {id, theory, question, answer[, prompt]}."""

    name = "proofwriter"
    splits = ("train", "test")
    is_target = True
    hub = ("tasksource/proofwriter", None)

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example from a verl row or a hub row."""
        prompt = verl_prompt(row)
        fields = (row.get("extra_info") or {}) if prompt is not None else row
        raw = row["reward_model"]["ground_truth"] if prompt is not None else row["answer"]
        label = canonical_label(raw)
        if label is None:
            raise ValueError(f"ProofWriter row {index} of {split} has answer {raw!r}")
        example: Example = {
            "id": row.get("id", f"{split}-{index}"),
            "theory": fields.get("theory", ""),
            "question": fields.get("question", ""),
            "answer": label,
        }
        if prompt is not None:
            example["prompt"] = prompt
        return example

    def render_messages(self, example: Example) -> list[Message]:
        """The user message and prefill from the example's theory and question."""
        return render_messages(example["theory"], example["question"])

    def reward(self, completion: str, example: Example) -> Reward:
        """0.1 * format + answer for the completion after 'Reasoning:'."""
        return reward(completion, example["answer"])
