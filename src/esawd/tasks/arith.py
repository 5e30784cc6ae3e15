"""A bounded arithmetic evaluator for Countdown answers; never evaluates model text as code.

The reference (`kschweig/es-awd`, `tasks/countdown/reward_function.py`) checks Countdown
answers with Python `eval` after a character filter that still admits `**`, so an answer such
as `9**9**9**9` hangs the trainer. This module replaces `eval` for the answers that filter
admits: integers, `+ - * / //`, unary signs and parentheses, with Python's numeric semantics
(int arithmetic is exact, `/` gives a float, `//` floors), so every answer that `eval` scored
without hanging gets the same value here. What differs, on purpose:

- `**` (exponentiation) is rejected; the Countdown prompt only allows + - * /.
- Nesting deeper than `MAX_DEPTH`, more than `MAX_TOKENS` tokens, or a literal longer than
  `MAX_DIGITS` digits is rejected (Python's parser allows ~200 nested parentheses and any
  length); no Countdown answer that uses the given numbers comes near these bounds.

Any rejection, division by zero or overflow returns None, so the caller scores a wrong answer.
"""

from __future__ import annotations

import re

MAX_DEPTH = 64  # nested parentheses and unary signs together
MAX_TOKENS = 512
MAX_DIGITS = 32

Number = int | float


class _Reject(Exception):
    """Internal signal: the expression is outside the accepted grammar or bounds."""


# One token after optional spaces; the regex engine skips spaces and digit runs in C.
_TOKEN = re.compile(r" *(?:([0-9]+)|(\*\*|//|[-+*/()]))")


def _tokenize(text: str) -> list[str | int]:
    """Split into int literals and operator/parenthesis strings; spaces separate tokens."""
    tokens: list[str | int] = []
    pos = 0
    while len(tokens) <= MAX_TOKENS:
        match = _TOKEN.match(text, pos)
        if match is None:
            break
        pos = match.end()
        literal, op = match.groups()
        if literal is not None:
            if len(literal) > MAX_DIGITS:
                raise _Reject
            # Python 3 rejects leading zeros ("05") except for all-zero literals ("00").
            if len(literal) > 1 and literal[0] == "0" and literal.strip("0"):
                raise _Reject
            # Two adjacent literals ("1 2") are a syntax error in Python too.
            if tokens and isinstance(tokens[-1], int):
                raise _Reject
            tokens.append(int(literal))
        elif op == "**":
            raise _Reject  # exponentiation is not allowed (see module docstring)
        else:
            tokens.append(op)
    if len(tokens) > MAX_TOKENS or text[pos:].strip(" "):
        raise _Reject
    return tokens


class _Parser:
    """Recursive descent over Python's grammar for sums, terms and signed factors."""

    def __init__(self, tokens: list[str | int]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | int | None:
        token = self.peek()
        self.pos += 1
        return token

    def sum(self) -> Number:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Number:
        value = self.factor()
        while self.peek() in ("*", "/", "//"):
            op = self.take()
            rhs = self.factor()
            if op == "*":
                value = value * rhs
            elif op == "/":
                value = value / rhs
            else:
                value = value // rhs
        return value

    def factor(self) -> Number:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject
        token = self.take()
        if token == "+":
            value = +self.factor()
        elif token == "-":
            value = -self.factor()
        elif token == "(":
            value = self.sum()
            if self.take() != ")":
                raise _Reject
        elif isinstance(token, int):
            value = token
        else:
            raise _Reject
        self.depth -= 1
        return value


def evaluate(expression: str) -> float | None:
    """Value of an arithmetic expression as a float, or None if invalid, unsafe or undefined."""
    if not isinstance(expression, str):
        return None
    try:
        parser = _Parser(_tokenize(expression))
        value = parser.sum()
        if parser.pos != len(parser.tokens):
            return None
        return float(value)
    except (_Reject, ZeroDivisionError, OverflowError):
        return None
