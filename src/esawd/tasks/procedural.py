"""Seeded procedural examples whose held-out split never overlaps the training split.

A generator proposes candidate problems from a seeded `random.Random`; each candidate's split
is decided by a hash of its canonical key (the problem itself, not the seed), so a problem is
either a training problem or a held-out one for every seed, and `draw(..., split="train")` and
`draw(..., split="test")` can never return the same problem, whatever seeds they are given.
Within one draw, problems are distinct.

    examples = draw(propose, 64, seed=0, split="test", name="arithmetic")

`propose(rng) -> (key, example) | None` returns the canonical key of a candidate and the
example, or None for a rejected candidate.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from esawd.tasks.base import Example

SPLITS = ("train", "test")
# A quarter of every generator's problem space is held out.
HELDOUT_FRACTION = 0.25

Propose = Callable[[random.Random], tuple[str, Example] | None]


def split_of(key: str) -> str:
    """'test' for a quarter of all keys (by SHA-256), 'train' for the rest."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if h < HELDOUT_FRACTION * 2**64 else "train"


def check_split(split: str, name: str) -> None:
    """Raise a ValueError naming the valid splits if `split` is not one of them."""
    if split not in SPLITS:
        raise ValueError(f"{name} has no split {split!r}; valid splits: {', '.join(SPLITS)}.")


def draw(propose: Propose, num_examples: int, *, seed: int, split: str, name: str) -> list[Example]:
    """`num_examples` distinct examples of `split`, the same for the same (seed, split)."""
    check_split(split, name)
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    # A string seed is hashed with SHA-512 by `random`: stable across processes and versions.
    rng = random.Random(f"{name}:{split}:{seed}")
    seen: set[str] = set()
    examples: list[Example] = []
    budget = 200 * num_examples + 10_000
    while len(examples) < num_examples:
        budget -= 1
        if budget < 0:
            raise ValueError(
                f"could draw only {len(examples)} distinct {split} examples of {name}, not "
                f"{num_examples}: the generator has too few distinct problems; ask for fewer."
            )
        candidate = propose(rng)
        if candidate is None:
            continue
        key, example = candidate
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        examples.append({"id": f"{name}-{split}-{seed}-{len(examples)}", **example})
    return examples
