"""Rule reasoning (procedural target task): ProofWriter's prompt and reward on generated
theories, short enough for the embedded 135M model, with no download.

    task = get_task("rules")
    train = task.generate(200, seed=0)                 # split="train"
    held_out = task.generate(200, seed=0, split="test")  # never overlaps any training draw

A theory is a few facts about one or two people and a few rules, in ProofWriter's wording
under its open-world assumption:

    Theory: Bob is big. Bob is not red. If someone is big then they are kind.
            If someone is kind then they are not young.
    Question: Bob is young.                                     -> False

The label is computed by forward chaining: True if the statement follows from the facts and
rules, False if its negation follows, Unknown if neither does. Labels are balanced (a third
each); `depth` is the number of rule applications the answer needs (0: a stated fact or an
unknown). Prompt and reward are ProofWriter's (`esawd.tasks.proofwriter`), unchanged.
"""

from __future__ import annotations

import random

from esawd.tasks import procedural, proofwriter
from esawd.tasks.base import Example, Message, Reward, Task

PEOPLE = ("Anne", "Bob", "Charlie", "Dave", "Erin", "Fiona", "Gary", "Harry")
ATTRIBUTES = (
    "big", "blue", "cold", "furry", "green", "kind", "nice", "quiet", "red", "rough", "round",
    "smart", "white", "young",
)  # fmt: skip
LABELS = ("True", "False", "Unknown")


def closure(facts, rules) -> dict[tuple[str, str], tuple[bool, int]] | None:
    """Everything that follows: {(person, attribute): (holds, depth)}; None on a contradiction.

    facts: (person, attribute, holds); rules: (if_attribute, then_attribute, holds), read
    "if someone is A then they are [not] B"."""
    known: dict[tuple[str, str], tuple[bool, int]] = {}
    for person, attr, holds in facts:
        if known.get((person, attr), (holds, 0))[0] != holds:
            return None
        known[(person, attr)] = (holds, 0)
    changed = True
    while changed:
        changed = False
        for (person, attr), (holds, depth) in list(known.items()):
            if not holds:
                continue
            for if_attr, then_attr, then_holds in rules:
                if if_attr != attr:
                    continue
                before = known.get((person, then_attr))
                if before is None:
                    known[(person, then_attr)] = (then_holds, depth + 1)
                    changed = True
                elif before[0] != then_holds:
                    return None
    return known


def _fact_text(person: str, attr: str, holds: bool) -> str:
    return f"{person} is {'' if holds else 'not '}{attr}."


def _rule_text(if_attr: str, then_attr: str, holds: bool, rng: random.Random) -> str:
    if holds and rng.random() < 0.5:
        return f"All {if_attr} people are {then_attr}."
    return f"If someone is {if_attr} then they are {'' if holds else 'not '}{then_attr}."


def propose(rng: random.Random) -> tuple[str, Example] | None:
    """One candidate theory and question with a label drawn uniformly (None if rejected)."""
    wanted = rng.choice(LABELS)
    people = rng.sample(PEOPLE, rng.randint(1, 2))
    attrs = rng.sample(ATTRIBUTES, 5)
    facts = [
        (rng.choice(people), a, rng.random() < 0.75) for a in rng.sample(attrs, rng.randint(2, 3))
    ]
    rules = []
    for _ in range(rng.randint(2, 3)):
        if_attr, then_attr = rng.sample(attrs, 2)
        rules.append((if_attr, then_attr, rng.random() < 0.7))
    known = closure(facts, rules)
    if known is None:
        return None
    candidates = []
    for person in people:
        for attr in attrs:
            for positive in (True, False):
                holds_depth = known.get((person, attr))
                if holds_depth is None:
                    label, depth = "Unknown", 0
                else:
                    label = "True" if holds_depth[0] == positive else "False"
                    depth = holds_depth[1]
                if label == wanted:
                    candidates.append((person, attr, positive, depth))
    if not candidates:
        return None
    # Prefer questions that need the rules, as ProofWriter's deeper questions do.
    deep = [c for c in candidates if c[3] > 0]
    person, attr, positive, depth = rng.choice(deep if deep and rng.random() < 0.7 else candidates)
    theory = " ".join([_fact_text(*f) for f in facts] + [_rule_text(*r, rng) for r in rules])
    question = _fact_text(person, attr, positive)
    example = {"theory": theory, "question": question, "answer": wanted, "depth": depth}
    return f"{theory} | {question}", example


def generate(num_examples: int, *, seed: int, split: str = "train") -> list[Example]:
    """Seeded theories and questions of `split`; train and test never share a pair."""
    return procedural.draw(propose, num_examples, seed=seed, split=split, name="rules")


class Rules(Task):
    """Procedural ProofWriter-style rule reasoning with ProofWriter's prompt and reward."""

    name = "rules"
    splits = procedural.SPLITS
    is_target = True
    procedural = True

    def generate(self, num_examples: int, *, seed: int, split: str = "train") -> list[Example]:
        """Seeded examples of `split`, a third of each label."""
        return generate(num_examples, seed=seed, split=split)

    def render_messages(self, example: Example) -> list[Message]:
        """ProofWriter's user message and 'Reasoning:' prefill."""
        return proofwriter.render_messages(example["theory"], example["question"])

    def reward(self, completion: str, example: Example) -> Reward:
        """ProofWriter's reward: 0.1 * format (`Answer: <label>` last) + answer."""
        return proofwriter.reward(completion, example["answer"])
