"""Reward tables written from the reference's reward functions (kschweig/es-awd), the safe
arithmetic evaluator, and hostile completions for every task."""

import time

import pytest

from esawd.tasks import TASK_NAMES, get_task
from esawd.tasks.arith import MAX_DEPTH, evaluate
from esawd.tasks.base import MAX_COMPLETION_CHARS

# ----- the arithmetic evaluator ---------------------------------------------------------------

ARITH = [
    ("1 + 2 * 3", 7.0),
    ("(1 + 2) * 3", 9.0),
    ("((44 + 19) + 35)", 98.0),
    ("3 / 2", 1.5),
    ("7 // 2", 3.0),
    ("-7 // 2", -4.0),  # unary minus binds tighter than //, as in Python
    ("-(7 // 2)", -3.0),
    ("2 * -3", -6.0),
    ("1 - - 1", 2.0),
    ("+5", 5.0),
    ("00", 0.0),  # Python accepts all-zero literals with leading zeros
    ("05", None),  # ... but not other leading zeros
    ("1 / 0", None),
    ("1 // (2 - 2)", None),
    ("2 ** 3", None),  # exponentiation is rejected (the prompt allows + - * /)
    ("9**9**9**9", None),
    ("2 * * 3", None),
    ("1 / / 2", None),
    ("1 2", None),
    ("(1)(2)", None),
    ("2(3)", None),
    ("()", None),
    ("(1 + 2", None),
    ("1 + 2)", None),
    ("", None),
    ("+", None),
    ("1e5", None),
    ("1.5 + 1", None),
    ("\u0663 + 1", None),  # Arabic-Indic three
    ("1\n+ 2", None),
]


@pytest.mark.parametrize("expression, expected", ARITH)
def test_evaluate_matches_python_semantics_or_rejects(expression, expected):
    assert evaluate(expression) == expected


def test_evaluate_agrees_with_python_eval_on_accepted_grammar():
    # Independent oracle: Python's own eval on strings we build from digits and + - * / //.
    import random

    rng = random.Random(0)
    for _ in range(300):
        expr = str(rng.randint(0, 99))
        for _ in range(rng.randint(1, 4)):
            op = rng.choice(["+", "-", "*", "/", "//"])
            expr = f"({expr} {op} {'-' if rng.random() < 0.2 else ''}{rng.randint(1, 99)})"
        assert evaluate(expr) == pytest.approx(float(eval(expr)), rel=1e-12), expr


def test_evaluate_bounds_nesting_and_size():
    assert evaluate("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH) is None
    assert evaluate("(" * (MAX_DEPTH - 1) + "1" + ")" * (MAX_DEPTH - 1)) == 1.0
    assert evaluate("-" * 10_000 + "1") is None
    assert evaluate("1" * 33) is None
    assert evaluate("99999999999999999999 * 99999999999999999999") == pytest.approx(1e40)
    start = time.perf_counter()
    for hostile in ["(" * 1_000_000, "1+" * 500_000 + "1", " " * 1_000_000 + "x", "9" * 10**6]:
        assert evaluate(hostile) is None
    assert time.perf_counter() - start < 0.5


# ----- Countdown ------------------------------------------------------------------------------

CD = {"numbers": [44, 19, 35], "target": "98"}
THINK = " 44 + 19 = 63, 63 + 35 = 98 </think>\n"

COUNTDOWN = [
    # (completion, example, format_reward, answer_reward)
    (THINK + "<answer>(44 + 19) + 35</answer>", CD, 1.0, 1.0),
    (THINK + "<answer>(44 + 19) + 35</answer>\n", CD, 1.0, 1.0),  # `$` allows a final newline
    (THINK + "<answer>35 + 19 + 44\n</answer>", CD, 1.0, 1.0),
    (THINK + "<answer>44 + 19 + 35</answer> Done.", CD, 0.6, 1.0),  # trailing text: partial
    ("<answer>44 + 19 + 35</answer>", CD, 0.5, 1.0),  # think block never closed
    (" thinking </think> no answer", CD, 0.1, 0.0),
    (THINK + "<answer>44 + 19 - 35</answer>", CD, 1.0, 0.0),  # wrong value
    (THINK + "<answer>44 + 54</answer>", CD, 1.0, 0.0),  # wrong numbers
    (THINK + "<answer>44 + 19 + 35 + 0</answer>", CD, 1.0, 0.0),  # extra number
    (THINK + "<answer>44 + 19 + 35 = 98</answer>", CD, 1.0, 0.0),  # '=' is not allowed
    (THINK + "<answer>044 + 19 + 35</answer>", CD, 1.0, 0.0),  # SyntaxError for eval
    (THINK + "<answer>44(19)35</answer>", CD, 1.0, 0.0),
    (THINK + "<answer>1 + 1</answer> <answer>44 + 19 + 35</answer>", CD, 1.0, 1.0),  # last one
    (THINK + "<answer>44 + 19 + 35</answer> <answer>1 + 1</answer>", CD, 1.0, 0.0),
    (THINK + "<answer></answer>", CD, 1.0, 0.0),
    (THINK + "<answer>-(-(44 + 19 + 35))</answer>", CD, 1.0, 1.0),
    (THINK + "<answer>71 + 15 / 4</answer>", {"numbers": [71, 15, 4], "target": "74.75"}, 1.0, 1.0),
    (THINK + "<answer>7 // 2 * 1</answer>", {"numbers": [7, 2, 1], "target": "3"}, 1.0, 1.0),
    (THINK + "<answer>7 / (4 - 4)</answer>", {"numbers": [4, 4, 7], "target": "7"}, 1.0, 0.0),
    # The reference's eval scores this 1.0; exponentiation is refused here (documented).
    (THINK + "<answer>2 ** 3 * 1</answer>", {"numbers": [2, 3, 1], "target": "8"}, 1.0, 0.0),
    ("", CD, 0.0, 0.0),
    ("<think></think>\n<answer>", CD, 0.1, 0.0),
]


@pytest.mark.parametrize("completion, example, fmt, ans", COUNTDOWN)
def test_countdown_reward_table(completion, example, fmt, ans):
    r = get_task("countdown").reward(completion, example)
    assert r == {
        "reward": pytest.approx(0.1 * fmt + ans),
        "format_reward": fmt,
        "answer_reward": ans,
    }


# ----- GSM8K ---------------------------------------------------------------------------------

GSM = {"answer": "18"}
GSM8K = [
    ("16 - 3 - 4 = 9\n9 * 2 = 18\n#### 18", 1.0, 1.0),
    ("9 * 2 = 18\n#### 18  \n\n", 1.0, 1.0),
    ("#### 1,8", 1.0, 1.0),  # commas are dropped
    ("#### 17", 1.0, 0.0),
    ("#### 18\nThanks!", 0.0, 1.0),  # answer found, but not on the last line
    ("The answer is \\boxed{18}.", 0.0, 1.0),
    ("The answer is $\\BOXED { 36/2 }$", 0.0, 1.0),  # fraction inside a boxed answer
    ("<answer> 18 </answer>", 0.0, 1.0),
    ("She makes 18 dollars.", 0.0, 1.0),  # fallback: first number in the region
    ("First 9 eggs, then 18 dollars.", 0.0, 0.0),
    ("She earns $18.00 a day", 0.0, 1.0),
    ("#### $18", 0.0, 1.0),  # '$' breaks the strict line, the fallback still reads 18
    ("<think>#### 5</think>\n#### 18", 1.0, 1.0),  # only the text after </think> counts
    ("#### 18\n<think>x</think> #### 5", 0.0, 0.0),
    ("#### -", 0.0, 0.0),
    ("x" * 5000 + "\n#### 18", 1.0, 1.0),
    ("#### 18\n" + "x" * 5000, 0.0, 0.0),  # the answer is outside the last 4096 characters
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize("completion, fmt, ans", GSM8K)
def test_gsm8k_reward_table(completion, fmt, ans):
    r = get_task("gsm8k").reward(completion, GSM)
    assert r == {
        "reward": pytest.approx(0.1 * fmt + ans),
        "format_reward": fmt,
        "answer_reward": ans,
    }


def test_gsm8k_negative_and_decimal_answers():
    task = get_task("gsm8k")
    assert task.reward("#### -3", {"answer": "-3"})["answer_reward"] == 1.0
    assert task.reward("#### 2.5", {"answer": "2.5"})["reward"] == pytest.approx(1.1)
    assert task.reward("#### 2.50001", {"answer": "2.5"})["answer_reward"] == 0.0


# ----- ProofWriter ----------------------------------------------------------------------------

PW = {"answer": "True"}
PROOFWRITER = [
    (" Anne is white, so she is smart.\nAnswer: True", 1.0, 1.0),
    ("  answer :  TRUE  \n\n", 1.0, 1.0),
    ("Answer: False", 1.0, 0.0),
    ("Answer: Maybe", 1.0, 0.0),  # a line-initial answer wins even when it is not a label
    ("Answer: True.", 0.0, 1.0),  # punctuation breaks the format, the last-line parse reads it
    ("Final answer is true!", 0.0, 1.0),
    ("Answer: True\nWait, that is false", 0.0, 1.0),  # line-initial answers come first
    ("I think it is false. No, it is true", 0.0, 1.0),  # last label word
    ("x Answer: True", 0.0, 1.0),
    ("The statement is entailed.", 0.0, 0.0),
    ("Answer: Unknown", 1.0, 0.0),
    ("true", 0.0, 1.0),
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize("completion, fmt, ans", PROOFWRITER)
def test_proofwriter_reward_table(completion, fmt, ans):
    r = get_task("proofwriter").reward(completion, PW)
    assert r == {
        "reward": pytest.approx(0.1 * fmt + ans),
        "format_reward": fmt,
        "answer_reward": ans,
    }


# ----- prior tasks (reward = answer; format is reported) --------------------------------------

PRIOR = [
    ("hellaswag", "3", "3", 1.0, 1.0),
    ("hellaswag", "3", " 3\n", 1.0, 1.0),
    ("hellaswag", "3", "The best ending is 3.", 0.0, 1.0),
    ("hellaswag", "3", "Not 2 but 3", 0.0, 0.0),  # the first digit 0-3 counts
    ("hellaswag", "3", "10", 0.0, 0.0),
    ("hellaswag", "3", "4", 0.0, 0.0),
    ("hellaswag", "3", "", 0.0, 0.0),
    ("piqa", "1", "1", 1.0, 1.0),
    ("piqa", "1", "Solution 1 works.", 0.0, 1.0),
    ("piqa", "1", "12", 0.0, 0.0),  # not a standalone digit
    ("piqa", "1", "2", 1.0, 0.0),
    ("piqa", "2", "Option 2, not 1", 0.0, 1.0),
    ("piqa", "1", "", 0.0, 0.0),
    ("arc_challenge", "C", "Step by step ... The answer is (C).", 1.0, 1.0),
    ("arc_challenge", "C", "the answer is (c)  \n", 1.0, 1.0),
    ("arc_challenge", "C", "The answer is C", 0.0, 1.0),
    ("arc_challenge", "C", "A or C? The answer is (B)", 1.0, 0.0),
    ("arc_challenge", "C", "I pick C because it fits.", 0.0, 1.0),
    ("arc_challenge", "C", "The answer is (F)", 0.0, 0.0),
    ("arc_challenge", "C", "The answer is (C). Also D.", 0.0, 1.0),
    ("mmlu_pro", "H", "The answer is (H).", 1.0, 1.0),
    ("mmlu_pro", "J", "so the answer is J", 0.0, 1.0),
    ("mmlu_pro", "H", "The answer is (K)", 0.0, 0.0),
    ("mmlu_pro", "H", "", 0.0, 0.0),
]


@pytest.mark.parametrize("name, answer, completion, fmt, ans", PRIOR)
def test_prior_task_reward_table(name, answer, completion, fmt, ans):
    r = get_task(name).reward(completion, {"answer": answer})
    assert r == {"reward": ans, "format_reward": fmt, "answer_reward": ans}


# ----- hostile completions --------------------------------------------------------------------

EXAMPLES = {
    "countdown": {"numbers": [44, 19, 35], "target": "98"},
    "gsm8k": {"answer": "18"},
    "proofwriter": {"answer": "True"},
    "hellaswag": {"answer": "3"},
    "piqa": {"answer": "1"},
    "arc_challenge": {"answer": "C"},
    "mmlu_pro": {"answer": "H"},
    "arithmetic": {"question": "Mia has 9 apples. She gets 9 more apples.", "answer": "18"},
    "rules": {"theory": "Bob is big.", "question": "Bob is big.", "answer": "True"},
}
FORMAT_WEIGHT = {
    "countdown": 0.1,
    "gsm8k": 0.1,
    "proofwriter": 0.1,
    "arithmetic": 0.1,
    "rules": 0.1,
}


def hostile_completions(n: int) -> dict[str, str]:
    """Inputs that are slow or fatal for regex/eval-based checkers, about n characters long."""
    return {
        "blank": " \n\t" * (n // 3),
        "newlines": "\n" * n,
        "crlf": "\r\n" * (n // 2),
        "separators": "\u2028\x1c\x85" * (n // 3),
        "digits": "9" * n,
        "arabic_digits": "\u0663" * n,
        "nul": "\x00" * n,
        "open_answers": "<answer>" * (n // 8),
        "open_thinks": "<think>" * (n // 7),
        "closes": "</answer></think>" * (n // 17),
        "many_pairs": "</think>\n<answer>1</answer>" * (n // 27),
        "parens": "</think>\n<answer>" + "(" * (n // 2) + "44+19+35" + ")" * (n // 2) + "</answer>",
        "unbalanced": "</think>\n<answer>" + "(" * n + "</answer>",
        "power": "</think>\n<answer>9**9**9**9</answer>",
        "long_power": "</think>\n<answer>" + "9**" * (n // 3) + "9</answer>",
        "signs": "</think>\n<answer>" + "-" * n + "44+19+35</answer>",
        "huge_literal": "</think>\n<answer>" + "1" * n + "</answer>",
        "hashes": "#### " * (n // 5),
        "hash_number": "####" + "1" * n,
        "fractions": "1/" * (n // 2),
        "boxed_spaces": "$\\boxed{" + " " * n,
        "boxed_many": "\\boxed{" * (n // 7),
        "answer_lines": "answer\n" * (n // 7),
        "answer_spaces": "Answer:" + " " * (n // 2) + "True" + " " * (n // 2) + "x",
        "answer_blank_lines": "\n" * n + "answer: true",
        "lenient": "final answer is" + " " * (n // 2) + "true" + " " * (n // 2) + "!x",
        "labels": "true " * (n // 5),
        "the_answer": "THE ANSWER IS " * (n // 14),
        "the_answer_spaces": "The answer is (A)" + " " * n + "x",
        "surrogates": "\ud800" * (n // 100),
        "mixed": "#### \u0663\u0664\n\\boxed{\u0663}\nAnswer: \u212anown",  # Kelvin sign
    }


def check_reward(name, completion):
    task, example = get_task(name), EXAMPLES[name]
    start = time.perf_counter()
    r = task.reward(completion, example)
    elapsed = time.perf_counter() - start
    assert set(r) == {"reward", "format_reward", "answer_reward"}
    assert 0.0 <= r["format_reward"] <= 1.0
    assert r["answer_reward"] in (0.0, 1.0)
    assert r["reward"] == pytest.approx(
        FORMAT_WEIGHT.get(name, 0.0) * r["format_reward"] + r["answer_reward"]
    )
    return elapsed


def timed(name, completion):
    # The best of three calls, so a busy CI machine does not fail a bound that holds.
    return min(check_reward(name, completion) for _ in range(3))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_hostile_completions_are_fast_and_in_range(name):
    for size in (1_000, MAX_COMPLETION_CHARS - 64):
        for label, completion in hostile_completions(size).items():
            assert timed(name, completion) < 0.025, (name, label, size)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_megabyte_completions_return_at_once_with_zero_reward(name):
    for label, completion in hostile_completions(1_000_000).items():
        if len(completion) <= MAX_COMPLETION_CHARS:
            continue
        assert timed(name, completion) < 0.005, (name, label)
        assert get_task(name).reward(completion, EXAMPLES[name])["reward"] == 0.0


@pytest.mark.parametrize("name", TASK_NAMES)
def test_reward_rejects_non_strings(name):
    with pytest.raises(TypeError, match="completion must be a str"):
        get_task(name).reward(b"#### 18", EXAMPLES[name])


def test_length_cap_is_not_hit_by_a_correct_long_answer():
    # A correct answer just under the cap is still scored; one past it is not.
    pad = "x" * (MAX_COMPLETION_CHARS - 100)
    task = get_task("gsm8k")
    assert task.reward(pad + "\n#### 18", GSM)["reward"] == pytest.approx(1.1)
    assert task.reward(pad + "x" * 200 + "\n#### 18", GSM)["reward"] == 0.0
