"""The procedural tasks (arithmetic, rules) and the split rule they share with generated
Countdown: determinism, held-out/train disjointness, answers checked by an independent
re-derivation, rewards on correct, wrong and malformed completions, prompt rendering."""

import collections
import re

import pytest

from esawd.tasks import PROCEDURAL_TASKS, countdown, get_task, gsm8k, procedural, proofwriter
from esawd.tasks import rules as rules_mod

GENERATED = ("arithmetic", "rules", "countdown")


def key(name, example):
    if name == "arithmetic":
        return example["question"]
    if name == "rules":
        return example["theory"] + " | " + example["question"]
    return f"{sorted(example['numbers'])}->{example['target']}"


@pytest.mark.parametrize("name", GENERATED)
def test_generators_are_seeded_and_distinct_within_a_draw(name):
    task = get_task(name)
    a = task.generate(150, seed=3, split="test")
    assert a == task.generate(150, seed=3, split="test")
    assert a != task.generate(150, seed=4, split="test")
    assert len({key(name, e) for e in a}) == 150
    assert len({e["id"] for e in a}) == 150


@pytest.mark.parametrize("name", GENERATED)
def test_held_out_never_overlaps_training_whatever_the_seeds(name):
    task = get_task(name)
    held_out = {key(name, e) for s in (0, 1) for e in task.generate(300, seed=s, split="test")}
    train = {key(name, e) for s in (0, 1, 2) for e in task.generate(300, seed=s, split="train")}
    assert held_out and train
    assert not held_out & train
    # The split is a property of the problem: every key lands where split_of says.
    assert all(procedural.split_of(k) == "test" for k in held_out)
    assert all(procedural.split_of(k) == "train" for k in train)


def test_split_rule_holds_out_about_a_quarter():
    keys = [f"problem {i}" for i in range(20_000)]
    share = sum(procedural.split_of(k) == "test" for k in keys) / len(keys)
    assert abs(share - procedural.HELDOUT_FRACTION) < 0.015


def test_a_generator_without_enough_problems_is_a_clear_error():
    with pytest.raises(ValueError, match="could draw only 1 distinct"):
        split = procedural.split_of("same")
        procedural.draw(lambda rng: ("same", {}), 2, seed=0, split=split, name="tiny")
    with pytest.raises(ValueError, match="has no split 'validation'"):
        get_task("rules").generate(2, seed=0, split="validation")


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_procedural_tasks_refuse_load_and_name_generate(name):
    with pytest.raises(ValueError, match=rf"{name} is procedural.*\.generate\("):
        get_task(name).load("train", "/nonexistent")


# ----- arithmetic ----------------------------------------------------------------------------


def test_arithmetic_answers_follow_from_the_question():
    # Re-derive each answer from the question text alone, by the sentence patterns.
    for e in get_task("arithmetic").generate(300, seed=0):
        q = e["question"]
        numbers = [int(n) for n in re.findall(r"\d+", q)]
        if "equally among" in q:
            expected = numbers[0] // numbers[1]
            assert numbers[0] % numbers[1] == 0
        elif "Each of the" in q:
            expected = numbers[0] * numbers[1]
        else:
            expected = numbers[0]
            for sentence, n in zip(re.findall(r"(gets|gives) \d+", q), numbers[1:], strict=True):
                expected += n if sentence.startswith("gets") else -n
        assert int(e["answer"]) == expected, q
        assert expected > 0
        assert e["solution"].endswith(f"#### {e['answer']}")
        assert e["steps"] == (2 if "Then" in q else 1)


def test_arithmetic_mixes_one_and_two_step_problems():
    steps = collections.Counter(e["steps"] for e in get_task("arithmetic").generate(400, seed=1))
    assert 150 < steps[1] < 250 and 150 < steps[2] < 250


@pytest.mark.parametrize(
    "completion, fmt, ans",
    [
        ("7 + 5 = 12\n#### 12", 1.0, 1.0),  # correct, in format
        ("The answer is 12.", 0.0, 1.0),  # GSM8K reads the first number when there is no ####
        ("7 + 5 = 12", 0.0, 0.0),  # ... which is 7 here: wrong
        ("#### 13", 1.0, 0.0),  # wrong
        ("#### twelve", 0.0, 0.0),  # malformed
        ("", 0.0, 0.0),
    ],
)
def test_arithmetic_reward_is_gsm8ks(completion, fmt, ans):
    task = get_task("arithmetic")
    example = {"question": "Mia has 7 apples. She gets 5 more apples. How many?", "answer": "12"}
    r = task.reward(completion, example)
    assert (r["format_reward"], r["answer_reward"]) == (fmt, ans)
    assert r == gsm8k.reward(completion, "12")


def test_arithmetic_prompt_is_gsm8ks_with_the_question():
    e = get_task("arithmetic").generate(1, seed=0)[0]
    messages = get_task("arithmetic").messages(e)
    assert messages == gsm8k.render_messages(e["question"])
    assert e["question"] in messages[0]["content"]
    assert messages[0]["content"].endswith("write only: #### <number>")


# ----- rules ---------------------------------------------------------------------------------

_FACT = re.compile(r"^(\w+) is (not )?(\w+)$")
_IF = re.compile(r"^If someone is (\w+) then they are (not )?(\w+)$")
_ALL = re.compile(r"^All (\w+) people are (\w+)$")


def entailed(theory: str, question: str) -> str:
    """An independent reader: parse the sentences back, close under the rules, read the label."""
    facts, rules = set(), []
    for sentence in filter(None, (s.strip() for s in theory.split("."))):
        if m := _IF.match(sentence):
            rules.append((m[1], m[3], m[2] is None))
        elif m := _ALL.match(sentence):
            rules.append((m[1], m[2], True))
        else:
            m = _FACT.match(sentence)
            assert m, sentence
            facts.add((m[1], m[3], m[2] is None))
    while True:
        new = {(p, b, h) for (p, a, held) in facts if held for (x, b, h) in rules if x == a}
        if new <= facts:
            break
        facts |= new
    m = _FACT.match(question.rstrip("."))
    person, attr, positive = m[1], m[3], m[2] is None
    if (person, attr, positive) in facts:
        return "True"
    if (person, attr, not positive) in facts:
        return "False"
    return "Unknown"


def test_rules_labels_follow_from_the_theory():
    examples = get_task("rules").generate(400, seed=0)
    for e in examples:
        assert entailed(e["theory"], e["question"]) == e["answer"], e
    labels = collections.Counter(e["answer"] for e in examples)
    assert all(100 < labels[k] < 170 for k in rules_mod.LABELS), labels
    # Some questions need the rules (depth >= 1), as ProofWriter's deeper questions do.
    assert sum(e["depth"] > 0 for e in examples) > 50


def test_rules_closure_refuses_contradictions():
    assert rules_mod.closure([("Bob", "big", True)], [("big", "red", False)]) == {
        ("Bob", "big"): (True, 0),
        ("Bob", "red"): (False, 1),
    }
    assert (
        rules_mod.closure([("Bob", "big", True), ("Bob", "red", True)], [("big", "red", False)])
        is None
    )


@pytest.mark.parametrize(
    "completion, fmt, ans",
    [
        ("Bob is big, so he is kind.\nAnswer: True", 1.0, 1.0),
        ("Answer: False", 1.0, 0.0),
        ("It is true.", 0.0, 1.0),  # the last label word, as ProofWriter reads it
        ("I cannot tell.", 0.0, 0.0),  # malformed: no label
        ("Answer: Maybe", 1.0, 0.0),
    ],
)
def test_rules_reward_is_proofwriters(completion, fmt, ans):
    example = {"theory": "Bob is big.", "question": "Bob is big.", "answer": "True"}
    r = get_task("rules").reward(completion, example)
    assert (r["format_reward"], r["answer_reward"]) == (fmt, ans)
    assert r == proofwriter.reward(completion, "True")


def test_rules_prompt_is_proofwriters_with_the_theory():
    e = get_task("rules").generate(1, seed=0)[0]
    messages = get_task("rules").messages(e)
    assert messages == proofwriter.render_messages(e["theory"], e["question"])
    assert f"Theory: {e['theory']}\nQuestion: {e['question']}" in messages[0]["content"]
    assert messages[-1] == {"role": "assistant", "content": "Reasoning:"}


def test_generated_countdown_keeps_its_options_and_solutions():
    two = countdown.generate(50, seed=0, min_count=2, max_count=2, max_target=99)
    assert all(len(e["numbers"]) == 2 and 1 <= int(e["target"]) <= 99 for e in two)
    for e in two:
        completion = f"<answer>{e['solution']}</answer>"
        assert countdown.answer_reward(completion, e["numbers"], e["target"]) == 1.0
