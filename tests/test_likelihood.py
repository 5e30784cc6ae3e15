"""Prior-task accuracy by option log-likelihood (esawd.analysis.likelihood, Task.choices)."""

import numpy as np
import pytest

from esawd import models, sampling, tasks
from esawd.analysis import likelihood
from esawd.tasks.base import Choices


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir)


def direct_score(model, context: str, option: str) -> float:
    """Summed log p(option tokens | context) from one unpadded forward pass, in float64."""
    ctx = likelihood._encode(model.tokenizer, context)
    cont = likelihood._encode(model.tokenizer, " " + option)
    ids = np.array([ctx + cont], np.int32)
    logits = np.asarray(models.forward(model.config, model.params, ids, np.ones_like(ids, bool)))
    z = logits[0, len(ctx) - 1 : -1].astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(sum(logp[k, t] for k, t in enumerate(cont)))


ITEMS = [
    Choices("Question: how do you keep bread fresh?\nAnswer:", ("seal it in a bag", "wet it"), 0),
    Choices("Q: 2+2?\nA:", ("4", "five hundred and twelve", "22"), 0),
    Choices("A very long context " * 12 + "ends here:", ("yes", "no"), 1),
]


@pytest.mark.parametrize("batch_size", [2, 7])
def test_batched_option_scores_equal_one_unpadded_pair_at_a_time(tiny, batch_size):
    """Each context runs once and its options share its cache: one item a batch (2 // 3
    options), or two (7 // 3) with the last batch padded by a copy; contexts of three lengths
    left-padded, options of 2 and 3 (the 2-option items pad a third) right-padded."""
    got = likelihood.option_scores(
        tiny.config, tiny.params, tiny.tokenizer, ITEMS, batch_size=batch_size
    )
    for item, scores in zip(ITEMS, got, strict=True):
        want = [direct_score(tiny, item.context, o) for o in item.options]
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
        assert (scores < 0).all()


def test_option_log_probs_name_bad_shapes(tiny):
    ids, mask = np.ones((2, 4), np.int32), np.ones((2, 4), bool)
    with pytest.raises(ValueError, match=r"opt_ids \(2, 3\) and opt_mask \(2, 3\) must share"):
        sampling.option_log_probs(tiny.config, tiny.params, ids, mask, ids[:, :3], mask[:, :3])
    right_padded = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    with pytest.raises(ValueError, match="ctx_mask row 0 is not left-padded"):
        sampling.option_log_probs(
            tiny.config, tiny.params, ids, right_padded, ids[:, None], mask[:, None]
        )


def test_the_answer_is_the_best_option_per_character(tiny, monkeypatch):
    """acc_norm: " a" (2 characters) at -2.0 is -1.0 per character and loses to " bbbb" (5)
    at -4.0, -0.8 per character, though its sum is higher."""
    items = [Choices("c", ("a", "bbbb"), 1), Choices("c", ("a", "bbbb"), 0)]
    monkeypatch.setattr(likelihood, "option_scores", lambda *a, **k: [np.array([-2.0, -4.0])] * 2)

    class T:
        def choices(self, example):
            return items[example]

    row = likelihood.choice_accuracy(None, None, tiny.tokenizer, T(), [0, 1], batch_size=4)
    assert row["correct"] == [1, 0] and row["accuracy"] == 0.5
    assert (row["num_examples"], row["num_options"], row["scoring"]) == (2, 2.0, "likelihood")


def test_row_keys():
    assert likelihood.row_key("piqa") == "piqa:ll"
    assert likelihood.base_task("piqa:ll") == "piqa" and likelihood.base_task("piqa") == "piqa"


@pytest.mark.parametrize(
    ("name", "example", "context", "options", "answer"),
    [
        ("piqa", {"goal": "Dry a shirt", "sol1": "hang it", "sol2": "wet it", "answer": "1"},
         "Question: Dry a shirt\nAnswer:", ("hang it", "wet it"), 0),
        ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "answer": "2"},
         "Question: g\nAnswer:", ("a", "b"), 1),
        ("arc_challenge", {"question": "Which?", "option_labels": ["1", "2", "3"],
                           "options": ["x", "y", "z"], "answer": "3"},
         "Question: Which?\nAnswer:", ("x", "y", "z"), 2),
        ("mmlu_pro", {"question": "Q?", "options": list("abcdefghij"), "answer": "D"},
         "Question: Q?\nAnswer:", tuple("abcdefghij"), 3),
        ("hellaswag", {"activity_label": "Cooking", "context": "She cracks an egg",
                       "endings": ["a", "b", "c", "d"], "answer": "2"},
         "Cooking: She cracks an egg", ("a", "b", "c", "d"), 2),
    ],
)  # fmt: skip
def test_prior_tasks_as_multiple_choice_items(name, example, context, options, answer):
    task = tasks.get_task(name)
    assert task.has_choices
    assert task.choices(example) == Choices(context, options, answer)


def test_tasks_without_fixed_options_say_which_have_them():
    task = tasks.get_task("countdown")
    assert not task.has_choices
    with pytest.raises(NotImplementedError, match="piqa, arc_challenge, mmlu_pro and hellaswag"):
        task.choices({})
    with pytest.raises(ValueError, match="answer 2 is not an index of 2 options"):
        Choices("c", ("a", "b"), 2)
