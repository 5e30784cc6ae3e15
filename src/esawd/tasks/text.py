"""Linear-time text helpers shared by the reward functions.

The reference reward functions (`kschweig/es-awd`, `tasks/*/reward_function.py`) use regexes
such as `<answer>(.*?)</answer>` with `findall` and `text.splitlines()`, some of which take
quadratic or worse time on hostile inputs (many unclosed tags, megabytes of blank lines).
These helpers return what those expressions return, using only scans that run in C and touch
each character a bounded number of times, so every reward stays within milliseconds.
"""

from __future__ import annotations

import functools
import re

# The characters at which `str.splitlines` breaks a line ("\r\n" breaks once, at "\n").
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def last_line(text: str) -> str | None:
    """`[l.strip() for l in text.splitlines() if l.strip()][-1]`, or None when all are blank."""
    # Every line break is whitespace, so after rstrip the last non-blank line is the tail
    # after the last break.
    text = text.rstrip()
    if not text:
        return None
    start = max(text.rfind(ch) for ch in LINE_BREAKS) + 1
    return text[start:].strip()


@functools.cache
def _tag_pattern(open_tag: str, close_tag: str) -> re.Pattern[str]:
    return re.compile(re.escape(open_tag) + "(.*?)" + re.escape(close_tag), re.DOTALL)


def last_tag_content(text: str, open_tag: str, close_tag: str) -> str | None:
    """Last group of `re.findall(open + '(.*?)' + close, text, re.DOTALL)`, or None."""
    end = text.rfind(close_tag)
    if end < 0:
        return None
    # Cutting after the last close tag keeps findall linear: every open tag that remains has a
    # close tag after it, so no attempt scans to the end of the text and fails.
    matches = _tag_pattern(open_tag, close_tag).findall(text, 0, end + len(close_tag))
    return matches[-1] if matches else None


def has_tag_pair(text: str, open_tag: str, close_tag: str, *, start: int = 0) -> bool:
    """Whether `re.search(open + '.*?' + close, text[start:], re.DOTALL)` would match."""
    i = text.find(open_tag, start)
    return i >= 0 and text.find(close_tag, i + len(open_tag)) >= 0
