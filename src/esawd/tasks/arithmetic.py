"""Arithmetic word problems (procedural target task): GSM8K's prompt and reward on generated
one- and two-step problems, so the embedded 135M model has a target it can partly solve with
no download (docs/results.md, "An offline target that learns").

    task = get_task("arithmetic")
    train = task.generate(200, seed=0)                 # split="train"
    held_out = task.generate(200, seed=0, split="test")  # never overlaps any training draw

Each problem is one sentence pattern per operation, with a name, an item and small numbers:

    add        "Mia has 7 apples. She gets 5 more apples. How many apples does Mia have now?"
    subtract   "... She gives 3 apples to her friend. How many apples does Mia have left?"
    multiply   "Mia buys 4 bags of apples. Each bag has 6 apples. How many apples does Mia buy?"
    divide     "Mia shares 24 apples equally among 4 friends. How many apples does each get?"
    two steps  an add/subtract sentence followed by a second one, answer after both

Prompt and reward are GSM8K's (`esawd.tasks.gsm8k`), unchanged: the user message asks for
`#### <number>` on the last line; reward = 0.1 * format + answer. Examples carry `question`,
`answer` (the number as a string), `solution` (the worked equation) and `steps` (1 or 2).
"""

from __future__ import annotations

import random

from esawd.tasks import gsm8k, procedural
from esawd.tasks.base import Example, Message, Reward, Task

NAMES = (
    ("Mia", "She"), ("Noah", "He"), ("Emma", "She"), ("Liam", "He"), ("Ava", "She"),
    ("Lucas", "He"), ("Sofia", "She"), ("Leo", "He"), ("Zoe", "She"), ("Omar", "He"),
    ("Nina", "She"), ("Ravi", "He"),
)  # fmt: skip
ITEMS = (
    "apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells",
    "cards", "balloons", "coins", "flowers",
)  # fmt: skip
CONTAINERS = ("bags", "boxes", "packs", "jars")
OPERATIONS = ("add", "subtract", "multiply", "divide")


def _add(rng: random.Random, name: str, pron: str, item: str, have: int) -> tuple[str, int, str]:
    b = rng.randint(2, 30)
    return f"{pron} gets {b} more {item}.", have + b, f"{have} + {b} = {have + b}"


def _subtract(rng, name, pron, item, have) -> tuple[str, int, str] | None:
    if have < 4:
        return None
    b = rng.randint(2, have - 2)
    text = f"{pron} gives {b} {item} to a friend."
    return text, have - b, f"{have} - {b} = {have - b}"


def _one_step(rng: random.Random) -> tuple[str, int, str] | None:
    """A one-step problem: (question, answer, solution)."""
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    op = rng.choice(OPERATIONS)
    if op in ("add", "subtract"):
        have = rng.randint(5, 60)
        step = (_add if op == "add" else _subtract)(rng, name, pron, item, have)
        if step is None:
            return None
        text, answer, solution = step
        tail = "now" if op == "add" else "left"
        question = f"{name} has {have} {item}. {text} How many {item} does {name} have {tail}?"
        return question, answer, solution
    container = rng.choice(CONTAINERS)
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    if op == "multiply":
        question = (
            f"{name} buys {a} {container} of {item}. Each of the {container} has {b} {item}. "
            f"How many {item} does {name} buy?"
        )
        return question, a * b, f"{a} * {b} = {a * b}"
    question = (
        f"{name} shares {a * b} {item} equally among {a} friends. "
        f"How many {item} does each friend get?"
    )
    return question, b, f"{a * b} / {a} = {b}"


def _two_step(rng: random.Random) -> tuple[str, int, str] | None:
    """Two add/subtract steps on one quantity: (question, answer, solution)."""
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    have = rng.randint(5, 60)
    texts, solutions, value = [], [], have
    for _ in range(2):
        step = rng.choice((_add, _subtract))(rng, name, pron, item, value)
        if step is None:
            return None
        text, value, solution = step
        texts.append(text)
        solutions.append(solution)
    then = texts[1][0].lower() + texts[1][1:]
    question = (
        f"{name} has {have} {item}. {texts[0]} Then {then} How many {item} does {name} have now?"
    )
    return question, value, "; ".join(solutions)


def propose(rng: random.Random, *, two_step_fraction: float = 0.5) -> tuple[str, Example] | None:
    """One candidate problem, keyed by its question text (None if rejected)."""
    steps = 2 if rng.random() < two_step_fraction else 1
    made = _two_step(rng) if steps == 2 else _one_step(rng)
    if made is None:
        return None
    question, answer, solution = made
    return question, {
        "question": question,
        "answer": str(answer),
        "solution": f"{solution}\n#### {answer}",
        "steps": steps,
    }


def generate(
    num_examples: int, *, seed: int, split: str = "train", two_step_fraction: float = 0.5
) -> list[Example]:
    """Seeded word problems of `split`; train and test never share a question."""
    if not 0.0 <= two_step_fraction <= 1.0:
        raise ValueError(f"two_step_fraction must lie in [0, 1], got {two_step_fraction}")
    return procedural.draw(
        lambda rng: propose(rng, two_step_fraction=two_step_fraction),
        num_examples, seed=seed, split=split, name="arithmetic",
    )  # fmt: skip


class Arithmetic(Task):
    """Procedural arithmetic word problems with GSM8K's prompt and reward."""

    name = "arithmetic"
    splits = procedural.SPLITS
    is_target = True
    procedural = True

    def generate(self, num_examples: int, *, seed: int, split: str = "train") -> list[Example]:
        """Seeded problems of `split` (half one-step, half two-step)."""
        return generate(num_examples, seed=seed, split=split)

    def render_messages(self, example: Example) -> list[Message]:
        """GSM8K's user message with the example's question."""
        return gsm8k.render_messages(example["question"])

    def reward(self, completion: str, example: Example) -> Reward:
        """GSM8K's reward: 0.1 * format (`#### <number>` last) + answer."""
        return gsm8k.reward(completion, example["answer"])
