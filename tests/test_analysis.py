"""The forgetting analysis (esawd.analysis, experiments.evaluate) on tiny ES and GRPO runs."""

import json
import re

import jax
import numpy as np
import pytest
from numerics import float_tol, logit_tol
from tiny_model import assert_bitwise, tiny_config, tiny_train
from trainer_driver import patch_reward

from esawd import analysis, models, prompts, sampling, scoring, tasks
from esawd.es import method as es_method
from esawd.rundir import RunDir, read_jsonl
from esawd.tasks.piqa import PIQA
from experiments import evaluate as evaluate_cli

PIQA_ROWS = [
    {"goal": f"Keep item {i} dry", "sol1": f"cover it {i}", "sol2": "soak it", "label": "1"}
    for i in range(5)
] + [
    {"goal": f"Open jar {i}", "sol1": "freeze it", "sol2": f"twist lid {i}", "label": "2"}
    for i in range(5)
]


def parity_reward(self, completion, example):
    """A deterministic PIQA stand-in that depends on the generated text and the label (random
    tiny models never write a lone 1 or 2, so the real reward would be 0 everywhere)."""
    del self
    code = sum(map(ord, completion)) + int(example["answer"])
    correct = float(code % 2 == 0)
    return {"reward": correct, "format_reward": float(code % 3 == 0), "answer_reward": correct}


# Meant to keep the module on one pytest-xdist worker so its ES run and KL samples are
# computed once (not yet effective, docs/testing.md).
pytestmark = pytest.mark.xdist_group("analysis")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "piqa").mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in PIQA_ROWS)
    (root / "piqa" / "validation.jsonl").write_text(lines)
    return root


@pytest.fixture(autouse=True)
def varied_rewards():
    from esawd.tasks.countdown import Countdown

    originals = Countdown.reward, PIQA.reward
    patch_reward()
    PIQA.reward = parity_reward
    yield
    Countdown.reward, PIQA.reward = originals


@pytest.fixture(scope="module")
def es_run(tmp_path_factory, tiny_dir):
    """A 4-iteration ES + L2 AWD run with checkpoints at 2 and 4 (1 and 3 only in the log)."""
    from esawd.tasks.countdown import Countdown

    original = Countdown.reward
    patch_reward()
    overrides = {"es.num_iterations": 4, "checkpoint.interval": 2, "checkpoint.max_to_keep": None}
    overrides |= {"awd.lam": 2.0, "eval.num_examples": 0}
    c = tiny_config(tmp_path_factory.mktemp("es") / "run", tiny_dir, **overrides)
    tiny_train(c)
    Countdown.reward = original
    return c.workdir


def settings(**overrides):
    base = dict(
        tasks=("countdown", "piqa"),
        num_examples=6,
        max_new_tokens=5,
        batch_size=4,
        kl_prompts=5,
        kl_max_new_tokens=7,
    )
    return analysis.AnalysisSettings(**{**base, **overrides})


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


# ---------------------------------------------------------------------------------------
# Weight drift and KL against direct numpy computations.
# ---------------------------------------------------------------------------------------


def test_weight_drift_matches_numpy():
    rng = np.random.default_rng(0)
    shapes = {
        ("embed", "embedding"): (7, 4),
        ("layers", "attn", "q_proj", "kernel"): (3, 4, 4),
        ("layers", "attn", "k_proj", "kernel"): (3, 4, 2),
        ("layers", "attn", "v_proj", "bias"): (3, 2),
        ("layers", "attn", "o_proj", "kernel"): (3, 4, 4),
        ("layers", "mlp", "up_proj", "kernel"): (3, 4, 5),
        ("layers", "mlp_norm", "scale"): (3, 4),
        ("norm", "scale"): (4,),
        ("lm_head", "kernel"): (4, 7),
    }

    def tree(values):
        out = {}
        for path, v in values.items():
            node = out
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = v
        return out

    theta0 = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
    theta = {
        p: (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32) for p, x in theta0.items()
    }
    got = analysis.weight_drift(jax.device_put(tree(theta)), jax.device_put(tree(theta0)))

    diffs = {p: theta[p].astype(np.float64) - theta0[p].astype(np.float64) for p in shapes}
    flat = np.concatenate([d.ravel() for d in diffs.values()])
    ref = np.concatenate([x.astype(np.float64).ravel() for x in theta0.values()])
    assert got["frobenius"] == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert got["relative"] == pytest.approx(np.linalg.norm(flat) / np.linalg.norm(ref), rel=1e-12)
    assert got["mean_abs"] == pytest.approx(np.abs(flat).mean(), rel=1e-12)
    assert got["max_abs"] == np.abs(flat).max()
    assert got["num_params"] == flat.size
    module = {
        "embedding": ["embedding"],
        "attn_q": ["q_proj"],
        "attn_k": ["k_proj"],
        "attn_v": ["v_proj"],
        "attn_o": ["o_proj"],
        "mlp": ["up_proj"],
        "norms": ["mlp_norm", "norm"],
        "head": ["lm_head"],
    }
    for name, keys in module.items():
        parts = [d.ravel() for p, d in diffs.items() if set(p) & set(keys)]
        assert got["per_module"][name] == pytest.approx(np.linalg.norm(np.concatenate(parts)))
    for layer in range(3):
        parts = [d[layer].ravel() for p, d in diffs.items() if p[0] == "layers"]
        assert got["per_layer"][layer] == pytest.approx(np.linalg.norm(np.concatenate(parts)))
    # untied head: the reference's state_dict has each tensor once, as ours
    assert got["frobenius_reference"] == got["frobenius"]
    assert got["relative_reference"] == got["relative"]


def test_weight_drift_of_a_tied_head_counts_it_once_and_the_reference_twice():
    # theta_0: embedding [[3, 0], [0, 0]] (||.||^2 = 9), norm [0, 4] (16): ||theta_0|| = 5.
    # Drift: embedding +2 in one entry (4), norm +1 in one entry (1): ours sqrt(5). The
    # reference's state_dict also holds lm_head.weight, the same tensor as the embedding, so
    # it adds the embedding again: drift sqrt(4 + 4 + 1) = 3, ||theta_0|| sqrt(9 + 9 + 16).
    theta0 = {"embed": {"embedding": np.array([[3.0, 0.0], [0.0, 0.0]], np.float32)},
              "norm": {"scale": np.array([0.0, 4.0], np.float32)}}  # fmt: skip
    theta = {"embed": {"embedding": np.array([[3.0, 2.0], [0.0, 0.0]], np.float32)},
             "norm": {"scale": np.array([1.0, 4.0], np.float32)}}  # fmt: skip
    assert analysis.has_tied_head(theta)
    got = analysis.weight_drift(jax.device_put(theta), jax.device_put(theta0))
    assert got["frobenius"] == pytest.approx(np.sqrt(5.0), rel=1e-15)
    assert got["relative"] == pytest.approx(np.sqrt(5.0) / 5.0, rel=1e-15)
    assert got["frobenius_reference"] == 3.0
    assert got["relative_reference"] == pytest.approx(3.0 / np.sqrt(34.0), rel=1e-15)
    assert got["num_params"] == 6 and "head" not in got["per_module"]
    # told the head is untied, both count the embedding once
    untied = analysis.weight_drift(theta, theta0, tied_head=False)
    assert untied["frobenius_reference"] == untied["frobenius"] == got["frobenius"]
    # an untied model (an lm_head leaf) is detected as such
    theta["lm_head"] = theta0["lm_head"] = {"kernel": np.ones((2, 2), np.float32)}
    assert not analysis.has_tied_head(theta)
    assert analysis.weight_drift(theta, theta0)["frobenius_reference"] == pytest.approx(
        np.sqrt(5.0), rel=1e-15
    )


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir)


def kl_samples(tiny):
    task = tasks.get_task("countdown")
    examples = task.generate(5, seed=3)
    return analysis.sample_base(
        tiny.config, tiny.params, tiny.tokenizer, task, examples,
        max_new_tokens=9, seed=0, batch_size=3,
    )  # fmt: skip


def numpy_log_probs(config, params, ids, mask, tokens, cont_mask):
    """log p(token) from full-sequence logits, log-softmax in float64 with numpy."""
    full = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, cont_mask], axis=1)
    logits = np.asarray(models.forward(config, params, full, full_mask), np.float64)
    P = ids.shape[1]
    z = logits[:, P - 1 : -1]  # the positions that predict each continuation token
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0] * cont_mask


def test_kl_of_a_model_with_itself_is_exactly_zero(tiny):
    smp = kl_samples(tiny)
    assert sum(int(n.sum()) for n in smp.lengths) > 0
    logp = [analysis.log_probs(tiny.config, tiny.params, smp, b) for b in range(len(smp.tokens))]
    got = analysis.kl_divergence(smp, logp)
    assert got["kl"] == 0.0 and got["kl_prompt_avg"] == 0.0
    assert got["num_prompts"] == 5


def test_kl_of_two_models_is_positive_and_matches_numpy(tiny):
    smp = kl_samples(tiny)
    rng = np.random.default_rng(1)
    tuned = jax.tree.map(
        lambda x: x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype), tiny.params
    )
    logp = [analysis.log_probs(tiny.config, tuned, smp, b) for b in range(len(smp.tokens))]
    got = analysis.kl_divergence(smp, logp)

    diff, per_prompt, lp_tol, scale = [], [], 0.0, []
    for b in range(len(smp.tokens)):
        args = (smp.ids[b], smp.mask[b], smp.tokens[b], smp.cont_mask(b))
        base = numpy_log_probs(tiny.config, tiny.params, *args)
        d = base - numpy_log_probs(tiny.config, tuned, *args)
        n = smp.cont_mask(b).sum(axis=1)
        diff.append(d.sum())
        per_prompt += list(d.sum(axis=1)[n > 0] / n[n > 0])
        seq = smp.ids[b].shape[1] + smp.tokens[b].shape[1]
        big = max(np.abs(base).max(), np.abs(d + base).max())
        lp_tol = max(lp_tol, logit_tol(tiny.config, seq, big, log_softmax=True))
        scale.append(np.abs(d[smp.cont_mask(b)]))
    tokens = sum(int(x.sum()) for x in smp.lengths)
    assert got["kl"] > 0.01
    # analysis.log_probs and this float64 log-softmax of the model's logits are two programs:
    # each log-prob of the pair may be off by logit_tol, the difference by twice that, and the
    # average over tokens adds its own rounding of mean |difference| (numerics).
    scale = np.concatenate(scale)
    tol = 2 * lp_tol + float_tol(np.float32, tokens + 2) * scale.mean()
    assert abs(got["kl"] - sum(diff) / tokens) <= tol
    assert abs(got["kl_prompt_avg"] - np.mean(per_prompt)) <= tol
    assert got["num_tokens"] == tokens
    # the per-prompt values the bootstrap interval resamples add back up to the estimate
    assert len(got["prompt_sums"]) == len(got["prompt_tokens"]) == got["num_prompts"]
    assert sum(got["prompt_tokens"]) == tokens
    assert sum(got["prompt_sums"]) / tokens == pytest.approx(got["kl"], rel=1e-9)
    lo, hi = analysis.kl_interval(got["prompt_sums"], got["prompt_tokens"])
    assert lo <= got["kl"] <= hi and lo < hi


def test_kl_samples_round_trip_through_the_cache(tiny, tmp_path):
    smp = kl_samples(tiny)
    smp.save(tmp_path / "s.npz", {"num_batches": len(smp.tokens), "task": "countdown"})
    back, meta = analysis.KLSamples.load(tmp_path / "s.npz")
    assert meta["task"] == "countdown"
    for name in ("ids", "mask", "tokens", "lengths", "base_logp"):
        for a, b in zip(getattr(smp, name), getattr(back, name), strict=True):
            np.testing.assert_array_equal(a, b)


def piqa_dir(root, n):
    """A data folder whose piqa/validation.jsonl holds n distinct problems."""
    (root / "piqa").mkdir(parents=True)
    rows = [
        {"goal": f"Goal {i}", "sol1": f"a {i}", "sol2": f"b {i}", "label": "1"} for i in range(n)
    ]
    (root / "piqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


def test_kl_prompts_are_the_references_selection(tmp_path):
    import random

    from esawd.analysis.forgetting import kl_examples, task_examples

    data = piqa_dir(tmp_path / "d", 120)
    whole = PIQA().load("validation", data)
    accuracy = task_examples("piqa", {}, data_dir=data, num_examples=20)

    def pick(selection, k=50, examples=accuracy):
        return kl_examples("piqa", {}, examples, data_dir=data, num_prompts=k, selection=selection)

    # evaluate_kl_divergence.py: maybe_select_subset(eval_data, subset_size=50, seed=2357) on
    # the whole evaluation split, not on the 2048 (here 20) accuracy examples
    assert pick("reference") == [whole[i] for i in random.Random(2357).sample(range(120), 50)]
    assert pick("reference") != whole[:50]
    assert pick("first") == accuracy[:50] == accuracy  # ours before: the accuracy subset's head
    assert pick("reference", k=200) == whole  # no more prompts than the split: all, in order
    # a generated task has no whole split: its (random) examples' head either way
    generated = task_examples("countdown", {}, data_dir="", num_examples=8)
    assert kl_examples(
        "countdown", {}, generated, data_dir="", num_prompts=3, selection="reference"
    ) == generated[:3]  # fmt: skip
    with pytest.raises(analysis.AnalysisError, match="kl_selection='nope'"):
        analysis.check_analysis_settings(settings(kl_selection="nope"))


def test_kl_prompts_of_a_file_based_target_come_from_its_whole_test_split():
    import os
    import random

    from esawd.analysis.forgetting import kl_examples, task_examples

    data = os.environ.get("ESAWD_DATA_DIR")
    if not data:
        pytest.skip("set ESAWD_DATA_DIR to the benchmark data folder (e.g. ../shared/data)")
    run = {"task": {"name": "gsm8k", "data_dir": data, "num_train": 200}}
    test = tasks.get_task("gsm8k").load("test", data)
    assert len(test) == 500  # the reference's tasks/gsm8k/test.parquet
    accuracy = task_examples("gsm8k", run, data_dir=data, num_examples=2048)
    assert accuracy == test  # fewer than 2048: the whole split, in order
    got = kl_examples("gsm8k", run, accuracy, data_dir=data, num_prompts=50, selection="reference")
    assert got == [test[i] for i in random.Random(2357).sample(range(500), 50)]


def test_an_evaluation_made_before_kl_selection_resumes_only_as_first(tmp_path):
    from esawd.analysis.forgetting import _check_resumed_settings

    path = tmp_path / analysis.SETTINGS_FILE
    old = settings(kl_selection="first").row_settings()
    del old["kl_selection"]  # evaluate.json as written before the key existed
    path.write_text(json.dumps(old))
    with pytest.raises(analysis.AnalysisError, match="kl_selection=first, now reference"):
        _check_resumed_settings(path, settings().row_settings())
    _check_resumed_settings(path, settings(kl_selection="first").row_settings())
    assert json.loads(path.read_text())["kl_selection"] == "first"


# ---------------------------------------------------------------------------------------
# theta_t of a run.
# ---------------------------------------------------------------------------------------


def test_replayed_theta_equals_the_checkpoint(es_run, tiny_dir):
    run = RunDir(es_run, max_to_keep=None)
    theta0 = jax.device_put(run.restore_anchor_numpy(models.load(tiny_dir).params))
    thetas = analysis.Thetas(run, theta0, method="es")
    assert thetas.steps == [2, 4]
    assert thetas.available() == [0, 1, 2, 3, 4]
    thetas.steps = []  # force replay from theta_0 and the ES log alone
    # replay runs the trainer's own update on the logged seeds/coefficients: bitwise
    for t in (2, 4):
        assert_bitwise(thetas.get(t), run.restore(t, theta0)[0])
    thetas = analysis.Thetas(run, theta0, method="es")
    thetas.steps = [2]  # iteration 4 replayed on top of checkpoint 2
    thetas.get(3)
    assert_bitwise(thetas.get(4), run.restore(4, theta0)[0])
    assert_bitwise(thetas.get(0), theta0)


def test_select_iterations():
    avail = list(range(11))
    assert analysis.select_iterations(avail, [5, 10], stride=0, explicit=()) == [0, 5, 10]
    assert analysis.select_iterations(avail, [10], stride=4, explicit=()) == [0, 4, 8, 10]
    assert analysis.select_iterations(avail, [10], stride=0, explicit=(3, 1)) == [1, 3]
    with pytest.raises(analysis.AnalysisError, match=r"iterations \[12\].*0\.\.10"):
        analysis.select_iterations(avail, [10], stride=0, explicit=(12,))


# ---------------------------------------------------------------------------------------
# The whole evaluation.
# ---------------------------------------------------------------------------------------


def test_forgetting_row_equals_accuracy_computed_by_hand(es_run, tiny_dir, data_dir, tmp_path):
    workdir = copy_run(es_run, tmp_path / "run")
    s = settings(tasks=("piqa",), iterations=(3,), kl=False, drift=False, data_dir=str(data_dir))
    rows = analysis.analyze_run(workdir, s, progress=False)[analysis.FORGETTING_FILE]
    (row,) = rows
    assert (row["iteration"], row["task"], row["num_examples"]) == (3, "piqa", 6)

    # By hand: theta_3 by replay, the same seeded subset, one example at a time.
    model = models.load(tiny_dir)
    run = RunDir(workdir, max_to_keep=None)
    theta3 = es_method.replay(model.params, run.es_log.rows(), upto=3)
    task = tasks.get_task("piqa")
    examples = tasks.eval_subset(task.load("validation", data_dir), size=6)
    correct, formatted = [], []
    for ex in examples:
        batch = prompts.encode_prompts([task.messages(ex)], model.tokenizer)
        tokens, n = sampling.generate(model.config, theta3, batch.ids, batch.mask, max_new_tokens=5)
        text = model.tokenizer.decode(np.asarray(tokens)[0, : int(n[0])], skip_special_tokens=True)
        code = sum(map(ord, text)) + int(ex["answer"])
        correct.append(code % 2 == 0)
        formatted.append(code % 3 == 0)
    assert 0 < np.mean(correct) < 1  # the fixture discriminates
    assert row["accuracy"] == pytest.approx(np.mean(correct))
    assert row["format_rate"] == pytest.approx(np.mean(formatted))


@pytest.mark.slow
def test_analyze_run_writes_every_file_and_resumes(es_run, data_dir, tmp_path):
    workdir = copy_run(es_run, tmp_path / "run")
    s = settings(data_dir=str(data_dir), stride=3, tasks=("countdown",))
    out = analysis.analyze_run(workdir, s, progress=False)
    its = [0, 3, 4]  # 0, multiples of the stride, the last
    assert [r["iteration"] for r in out[analysis.FORGETTING_FILE]] == its
    assert [r["iteration"] for r in out[analysis.KL_FILE]] == its
    assert [r["iteration"] for r in out[analysis.DRIFT_FILE]] == its
    kl = {r["iteration"]: r["kl"] for r in out[analysis.KL_FILE]}
    drift = {r["iteration"]: r for r in out[analysis.DRIFT_FILE]}
    assert kl[0] == 0.0 and kl[3] > 0 and kl[4] > 0
    assert drift[0]["frobenius"] == 0.0 and drift[4]["frobenius"] > 0
    assert drift[4]["per_module"].keys() == {
        "embedding",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_o",
        "mlp",
        "norms",
    }
    assert len(drift[4]["per_layer"]) == 2
    assert (tmp_path / "run" / analysis.SAMPLES_DIR / "countdown.npz").exists()

    # Again: nothing to do. With a second task: only its rows are added, to every iteration.
    before = (tmp_path / "run" / analysis.FORGETTING_FILE).read_text()
    analysis.analyze_run(workdir, s, progress=False)
    assert (tmp_path / "run" / analysis.FORGETTING_FILE).read_text() == before
    s2 = settings(data_dir=str(data_dir), stride=3, tasks=("countdown", "piqa"), kl=False)
    rows = analysis.analyze_run(workdir, s2, progress=False)[analysis.FORGETTING_FILE]
    assert [(r["iteration"], r["task"]) for r in rows[3:]] == [(t, "piqa") for t in its]
    assert len(read_jsonl(tmp_path / "run" / analysis.KL_FILE)) == 3

    # Changed settings would mix rows of different meaning: refused, with the fix.
    with pytest.raises(analysis.AnalysisError, match="num_examples=6, now 7.*--fresh"):
        analysis.analyze_run(
            workdir, settings(num_examples=7, data_dir=str(data_dir)), progress=False
        )


def test_a_crash_loses_at_most_the_item_it_was_on(es_run, tmp_path, monkeypatch):
    workdir = copy_run(es_run, tmp_path / "run")
    calls = []
    real = scoring.heldout_accuracy

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "heldout_accuracy", dies_on_the_second)
    s = settings(tasks=("countdown",), kl=False, iterations=(0, 2))
    with pytest.raises(KeyboardInterrupt):
        analysis.analyze_run(workdir, s, progress=False)
    assert [r["iteration"] for r in read_jsonl(tmp_path / "run" / analysis.FORGETTING_FILE)] == [0]
    monkeypatch.setattr(scoring, "heldout_accuracy", real)
    out = analysis.analyze_run(workdir, s, progress=False)
    assert [r["iteration"] for r in out[analysis.FORGETTING_FILE]] == [0, 2]


@pytest.mark.slow
def test_grpo_runs_are_evaluated_at_their_checkpoints(tmp_path, tiny_dir):
    c = tiny_config(tmp_path / "grpo", tiny_dir, method="grpo", **{"eval.num_examples": 0})
    params = tiny_train(c)
    s = settings(tasks=("countdown",), kl_prompts=3)
    out = analysis.analyze_run(c.workdir, s, progress=False)
    assert [r["iteration"] for r in out[analysis.DRIFT_FILE]] == [0, 1, 2]
    theta0 = models.load(tiny_dir).params
    want = analysis.weight_drift(params, theta0)["frobenius"]
    assert out[analysis.DRIFT_FILE][-1]["frobenius"] == pytest.approx(want, rel=1e-12)
    assert analysis.run_label(analysis.read_run_config(c.workdir)) == "GRPO"
    thetas = analysis.Thetas(RunDir(c.workdir, max_to_keep=None), theta0, method="grpo")
    thetas.steps = [2]
    with pytest.raises(analysis.AnalysisError, match="no checkpoint at iteration 1"):
        thetas.get(1)


def test_bad_settings_and_folders_are_refused(tmp_path):
    with pytest.raises(analysis.AnalysisError, match="tasks='piqa,nope' is invalid"):
        analysis.check_analysis_settings(settings(tasks=("piqa", "nope")))
    with pytest.raises(analysis.AnalysisError, match="stride=-1"):
        analysis.check_analysis_settings(settings(stride=-1))
    with pytest.raises(analysis.AnalysisError, match="no value for 'piqa'"):
        analysis.check_analysis_settings(settings(max_new_tokens={"countdown": 4}))
    with pytest.raises(analysis.AnalysisError, match="not a run directory"):
        analysis.analyze_run(tmp_path, settings(), progress=False)


@pytest.mark.slow
def test_command_line(es_run, data_dir, tmp_path, capsys):
    workdir = copy_run(es_run, tmp_path / "run")
    evaluate_cli.main([
        "--workdir", workdir, "--tasks", "target,piqa", "--data_dir", str(data_dir),
        "--num_examples", "4", "--max_new_tokens", "target=5,default=3", "--iterations", "0,4",
        "--batch_size", "4", "--kl_prompts", "2", "--kl_max_new_tokens", "4", "--no_progress",
    ])  # fmt: skip
    rows = read_jsonl(tmp_path / "run" / analysis.FORGETTING_FILE)
    assert [(r["iteration"], r["task"]) for r in rows] == [
        (0, "countdown"), (0, "piqa"), (4, "countdown"), (4, "piqa")
    ]  # fmt: skip
    stored = json.loads((tmp_path / "run" / analysis.SETTINGS_FILE).read_text())
    assert stored["max_new_tokens"] == {"countdown": 5, "piqa": 3}
    assert "ES+AWD L2 lam=2 N=4" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=re.escape("no value for piqa")):
        evaluate_cli.main(["--workdir", workdir, "--tasks", "piqa", "--max_new_tokens", "x=3"])


def test_likelihood_rows_are_paired_resume_and_refuse_a_changed_count(es_run, data_dir, tmp_path):
    workdir = copy_run(es_run, tmp_path / "run")
    s = settings(tasks=(), likelihood={"piqa": 6}, iterations=(0, 4), kl=False, drift=False,
                 data_dir=str(data_dir))  # fmt: skip
    rows = analysis.analyze_run(workdir, s, progress=False)[analysis.FORGETTING_FILE]
    assert [(r["iteration"], r["task"], len(r["correct"])) for r in rows] == [
        (0, "piqa:ll", 6), (4, "piqa:ll", 6)
    ]  # fmt: skip
    # the row at 0 is theta_0's, scored directly on the same seeded subset
    task = tasks.get_task("piqa")
    examples = tasks.eval_subset(task.load("validation", data_dir), size=6)
    tiny = models.load(analysis.read_run_config(workdir)["model"]["name"])
    direct = analysis.likelihood.choice_accuracy(
        tiny.config, tiny.params, tiny.tokenizer, task, examples, batch_size=3
    )
    assert rows[0]["correct"] == direct["correct"]
    # again: nothing to do; a generated task joins without touching the likelihood rows
    before = (tmp_path / "run" / analysis.FORGETTING_FILE).read_text()
    analysis.analyze_run(workdir, s, progress=False)
    assert (tmp_path / "run" / analysis.FORGETTING_FILE).read_text() == before
    s2 = settings(tasks=("piqa",), likelihood={"piqa": 6}, iterations=(4,), kl=False,
                  drift=False, data_dir=str(data_dir))  # fmt: skip
    rows = analysis.analyze_run(workdir, s2, progress=False)[analysis.FORGETTING_FILE]
    assert [(r["iteration"], r["task"]) for r in rows[2:]] == [(4, "piqa")]
    with pytest.raises(analysis.AnalysisError, match="likelihood piqa=6, now 5.*--fresh"):
        analysis.analyze_run(workdir, settings(likelihood={"piqa": 5}), progress=False)


def test_likelihood_settings_are_checked():
    with pytest.raises(analysis.AnalysisError, match="'countdown' has no fixed options.*piqa"):
        analysis.check_analysis_settings(settings(likelihood={"countdown": 5}))
    with pytest.raises(analysis.AnalysisError, match="examples for piqa is 0"):
        analysis.check_analysis_settings(settings(likelihood={"piqa": 0}))
    with pytest.raises(analysis.AnalysisError, match="tasks=''"):
        analysis.check_analysis_settings(settings(tasks=()))
    assert evaluate_cli.parse_likelihood("piqa=10, arc_challenge=5") == {
        "piqa": 10, "arc_challenge": 5
    }  # fmt: skip
    with pytest.raises(Exception, match="task=examples pairs"):
        evaluate_cli.parse_likelihood("piqa")
