"""The letter-choice reward shared by ARC-Challenge and MMLU-Pro.

Reference: `kschweig/es-awd`, `prior_tasks/{arc_challenge,mmlu_pro}/reward_function.py`; the
two differ only in the letters (A-E, A-J). On the upper-cased completion the prediction is the
first `ANSWER IS (X)`, else the first `ANSWER IS X`, else the first standalone letter X. Format
(reported only) is 1.0 if the completion ends with `The answer is (X)` (an optional period and
whitespace after). Reward = answer. No differences from the reference.
"""

from __future__ import annotations

import functools
import re

from esawd.tasks.base import Reward, make_reward, too_long, zero_reward


@functools.cache
def _patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    choice = f"([{letters}])"
    return (
        re.compile(rf"THE ANSWER IS\s*\({choice}\)\.?\s*\Z"),  # strict format, at the end
        re.compile(rf"ANSWER IS\s*\({choice}\)"),
        re.compile(rf"ANSWER IS\s*{choice}"),
        re.compile(rf"\b{choice}\b"),
    )


def predicted_letter(completion: str, letters: str) -> str | None:
    """The chosen letter, read as the reference reads it, or None."""
    upper = completion.upper()
    for pattern in _patterns(letters)[1:]:
        match = pattern.search(upper)
        if match:
            return match.group(1)
    return None


def reward(completion: str, answer: str, *, letters: str) -> Reward:
    """Answer: the predicted letter equals `answer`; format: ends with 'The answer is (X)'."""
    if too_long(completion):
        return zero_reward()
    strict = _patterns(letters)[0].search(completion.upper()) is not None
    correct = predicted_letter(completion, letters) == str(answer)
    return make_reward(float(strict), float(correct), format_weight=0.0)


def format_options(labels: list[str], options: list[str]) -> str:
    """'A. first\\nB. second ...' as in the reference's prompts."""
    return "\n".join(f"{label}. {option}" for label, option in zip(labels, options, strict=True))
