"""GRPO: the objective against a numpy reference, gradients against finite differences, a toy
task it must learn, and the trainer end to end (run directory, resume, configs)."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_model
from numerics import assert_sum_close, chain_tol, float_tol, forward_terms, logit_tol
from tiny_model import assert_bitwise, leaves

from configs import grpo_default, grpo_paper
from esawd import grpo, models, sampling, scoring, settings, tasks
from esawd.rundir import RunDir
from experiments import run as run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir)


@pytest.fixture(autouse=True)
def _varied_reward(varied_reward):
    """Every test here runs with Countdown's reward varying with the text (conftest)."""


# ---------------------------------------------------------------------------------------
# The objective against numpy, on hand-made batches.
# ---------------------------------------------------------------------------------------


def np_advantages(rewards, eps):
    out = np.zeros_like(rewards, dtype=np.float64)
    for p, group in enumerate(rewards):
        mean = sum(group) / len(group)
        std = np.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        out[p] = [(r - mean) / (std + eps) for r in group]
    return out


def np_loss_terms(logp, old, ref, adv, mask, beta):
    """Sum of the absolute values that the loss adds up, per token: |rho A| + beta (e^d + |d| +
    1), the scale of its rounding error (numerics); and |d loss / d logp| per token, bounded
    by the same expression without the constant."""
    rho = np.exp(logp.astype(np.float64) - old)
    d = ref.astype(np.float64) - logp
    scale = np.abs(rho * adv[:, None]) + beta * (np.exp(d) + np.abs(d) + 1)
    slope = np.abs(rho * adv[:, None]) + beta * (np.exp(d) + 1)
    return np.where(mask, scale, 0), np.where(mask, slope, 0)


def np_loss(logp, old, ref, adv, mask, clip_eps, beta, num_tokens):
    """Token by token: -min(rho A, clip(rho) A) + beta k3, summed over real tokens / count."""
    total, clipped = 0.0, 0
    for b in range(logp.shape[0]):
        for c in range(logp.shape[1]):
            if not mask[b, c]:
                continue
            rho = np.exp(logp[b, c] - old[b, c])
            a = adv[b]
            rho_c = min(max(rho, 1 - clip_eps), 1 + clip_eps)
            total += -min(rho * a, rho_c * a)
            clipped += int(rho_c * a < rho * a)  # the clipped term is the active one
            d = ref[b, c] - logp[b, c]
            total += beta * (np.exp(d) - d - 1)
    return total / num_tokens, clipped


def test_group_advantages_match_numpy():
    rewards = np.array([[1.0, 0.0, 0.5, 0.25], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    got = np.asarray(grpo.group_advantages(rewards, eps=1e-6))
    # float32 against float64: (r - mean) / std after a mean and a variance over the group,
    # 2 G + 5 roundings of values of size (|r| + |mean|) / std (numerics).
    G = rewards.shape[1]
    mean, std = rewards.mean(1, keepdims=True), rewards.std(1, ddof=1, keepdims=True)
    scale = (np.abs(rewards) + np.abs(mean)) / (std + 1e-6)
    assert_sum_close(got, np_advantages(rewards, 1e-6), scale=scale, dtype=np.float32,
                     terms=2 * G + 5)  # fmt: skip
    assert np.all(got[1] == 0)  # a group with equal rewards carries no signal
    assert_sum_close(got.mean(axis=1), 0, scale=np.abs(got).sum(1), dtype=np.float32,
                     terms=3 * G + 5)  # fmt: skip
    with pytest.raises(ValueError, match=r"\[prompts, group >= 2\].*\(3,\)"):
        grpo.group_advantages(np.ones(3))


def test_k3_kl_matches_numpy_and_is_non_negative():
    logp = np.log(np.array([0.5, 0.1, 0.9, 0.3]))
    ref = np.log(np.array([0.5, 0.3, 0.2, 0.31]))
    d = ref - logp
    # e^d - d - 1 cancels for small d: the error scales with e^d + |d| + 1, not with the
    # result; a subtraction, an exp (2 roundings) and two more subtractions (numerics).
    assert_sum_close(grpo.k3_kl(logp, ref), np.exp(d) - d - 1, scale=np.exp(d) + np.abs(d) + 1,
                     dtype=np.float32, terms=5)  # fmt: skip
    assert float(grpo.k3_kl(logp, ref)[0]) == 0.0 and np.all(np.asarray(grpo.k3_kl(logp, ref)) >= 0)
    # unbiased: E_{x~pi}[k3] = KL(pi || ref) on a small categorical
    pi, pr = np.array([0.2, 0.5, 0.3]), np.array([0.4, 0.4, 0.2])
    k3 = np.asarray(grpo.k3_kl(np.log(pi), np.log(pr)))
    d = np.log(pr / pi)
    assert_sum_close((pi * k3).sum(), (pi * np.log(pi / pr)).sum(), dtype=np.float32, terms=9,
                     scale=(pi * (np.exp(d) + np.abs(d) + 1)).sum())  # fmt: skip


def test_policy_loss_matches_numpy_with_clipping_and_micro_batches():
    rng = np.random.default_rng(3)
    B, C = 5, 7
    logp = rng.normal(-2.0, 1.0, (B, C)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, (B, C))).astype(np.float32)  # ratios well outside 1 +- 0.2
    ref = (logp + rng.normal(0, 0.5, (B, C))).astype(np.float32)
    adv = np.array([1.5, -0.7, 0.0, -1.2, 0.4], np.float32)
    mask = np.arange(C)[None, :] < np.array([7, 3, 5, 1, 6])[:, None]
    n = int(mask.sum())
    want, want_clipped = np_loss(logp, old, ref, adv, mask, 0.2, 0.05, n)
    loss, aux = grpo.policy_loss(
        logp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.05, num_tokens=n
    )
    # float32 against float64: a sum over n tokens of terms of both signs, each a few
    # roundings deep (exp, min, clip, the KL term): n + 8 roundings of sum |terms| / n.
    scale = np_loss_terms(logp, old, ref, adv, mask, 0.05)[0].sum() / n
    assert_sum_close(float(loss), want, scale=scale, dtype=np.float32, terms=n + 8)
    assert 0 < want_clipped < n and int(aux["clipped"]) == want_clipped
    assert int(aux["tokens"]) == n
    # micro-batches dividing by the mini-batch's token count add up to the whole
    parts = [
        grpo.policy_loss(logp[s], old[s], ref[s], adv[s], mask[s], clip_eps=0.2, kl_coef=0.05,
                         num_tokens=n)[0]
        for s in (slice(0, 2), slice(2, 5))
    ]  # fmt: skip
    assert_sum_close(float(sum(parts)), want, scale=scale, dtype=np.float32, terms=n + 9)


# ---------------------------------------------------------------------------------------
# Log-probabilities and gradients on the tiny model.
# ---------------------------------------------------------------------------------------


def tiny_batch(tiny, *, group_size=3, max_new_tokens=6, seed=0):
    task = tasks.get_task("countdown")
    examples = task.generate(2, seed=5)
    prompts = scoring.encode(task, examples, tiny.tokenizer)
    tokens, lengths = grpo.rollout(
        tiny.config, tiny.params, prompts.ids, prompts.mask, jax.random.key(seed),
        group_size=group_size, max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return prompts, tokens, lengths


def test_token_log_probs_match_the_sampler(tiny):
    prompts, tokens, lengths = tiny_batch(tiny)
    ids, mask = (np.repeat(x, 3, axis=0) for x in prompts)
    cont_mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    got = sampling.token_log_probs(tiny.config, tiny.params, ids, mask, tokens, cont_mask, chunk=4)
    want = sampling.sequence_log_probs(tiny.config, tiny.params, ids, mask, tokens, cont_mask)
    # Chunked with rematerialisation vs the sampler's scorer: two programs, equal to a float32
    # forward's rounding (numerics.logit_tol).
    tol = logit_tol(tiny.config, ids.shape[1] + tokens.shape[1], np.abs(np.asarray(want)).max(),
                    log_softmax=True)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=tol, rtol=0)
    assert np.all(np.asarray(got)[~cont_mask] == 0) and np.all(np.asarray(got)[cont_mask] < 0)


def loss_inputs(tiny, *, off_policy):
    prompts, tokens, lengths = tiny_batch(tiny, group_size=2, max_new_tokens=5)
    ids, pmask = (np.repeat(x, 2, axis=0) for x in prompts)
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    mask[1, 2:] = False  # a shorter completion
    adv = np.array([1.0, -0.5, 0.8, -1.3], np.float32)
    rng = np.random.default_rng(0)
    ref_params = jax.tree.map(lambda x: x + 0.02 * rng.standard_normal(x.shape), tiny.params)
    old = None
    if off_policy:
        lp = sampling.token_log_probs(tiny.config, tiny.params, ids, pmask, tokens, mask)
        old = np.where(mask, np.asarray(lp) + rng.normal(0, 0.3, mask.shape), 0).astype(np.float32)
    return ids, pmask, tokens, mask, adv, old, ref_params


KW = (jnp.float32(0.2), jnp.float32(0.5))  # clip_eps, kl_coef


@pytest.mark.parametrize("off_policy", [False, True])
def test_loss_gradient_matches_finite_differences(tiny, off_policy):
    cfg, params = tiny.config, tiny.params
    ids, pmask, tokens, mask, adv, old, ref_params = loss_inputs(tiny, off_policy=off_policy)
    n = jnp.float32(mask.sum())
    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, loss, _ = grpo._accumulate_grad(
        cfg, params, ref_params, zeros, ids, pmask, tokens, mask, adv, old, n, *KW
    )
    ref_lp = sampling.token_log_probs(cfg, ref_params, ids, pmask, tokens, mask)
    fixed_old = old
    if old is None:  # on-policy: pi_old is the policy at the evaluation point, held fixed
        fixed_old = sampling.token_log_probs(cfg, params, ids, pmask, tokens, mask)

    @jax.jit
    def loss_at(p):
        lp = sampling.token_log_probs(cfg, p, ids, pmask, tokens, mask)
        return grpo.policy_loss(lp, fixed_old, ref_lp, adv, mask, clip_eps=KW[0], kl_coef=KW[1],
                                num_tokens=n)[0]  # fmt: skip

    # loss_at and _accumulate_grad are two programs (another fusion, rematerialised log-probs):
    # each token's log-prob may differ by logit_tol, which moves the loss by at most
    # sum |d loss / d logp| * that / n, plus the rounding of the sum itself (numerics).
    lp = np.asarray(sampling.token_log_probs(cfg, params, ids, pmask, tokens, mask))
    lp_tol = logit_tol(cfg, ids.shape[1] + tokens.shape[1], np.abs(lp).max(), log_softmax=True)
    scale, slope = np_loss_terms(lp, np.asarray(fixed_old), np.asarray(ref_lp), adv, mask, KW[1])
    tol = (slope.sum() * lp_tol + float_tol(np.float32, int(n) + 8) * scale.sum()) / float(n)
    assert abs(float(loss_at(params)) - float(loss)) <= tol, (float(loss_at(params)), float(loss))
    rng = np.random.default_rng(1)
    for _ in range(2):
        v = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
        h = 1e-3 / np.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(v)))
        plus = jax.tree.map(lambda x, d: x + h * d, params, v)  # noqa: B023
        minus = jax.tree.map(lambda x, d: x - h * d, params, v)  # noqa: B023
        fd = (float(loss_at(plus)) - float(loss_at(minus))) / (2 * h)
        dots = jax.tree.map(lambda g, d: float(jnp.sum(g * d)), grads, v)
        analytic = sum(jax.tree.leaves(dots))
        assert abs(analytic) > 1e-3
        assert fd == pytest.approx(analytic, rel=2e-2)


def test_micro_batch_accumulation_equals_one_batch(tiny):
    cfg, params = tiny.config, tiny.params
    ids, pmask, tokens, mask, adv, old, ref_params = loss_inputs(tiny, off_policy=True)
    n = jnp.float32(mask.sum())
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    whole, *_ = grpo._accumulate_grad(cfg, params, ref_params, zeros(), ids, pmask, tokens, mask,
                                      adv, old, n, *KW)  # fmt: skip
    acc = zeros()
    for s in (slice(0, 2), slice(2, 4)):
        acc, *_ = grpo._accumulate_grad(cfg, params, ref_params, acc, ids[s], pmask[s], tokens[s],
                                        mask[s], adv[s], old[s], n, *KW)  # fmt: skip
    # Two micro-batches vs one batch: two programs. A gradient entry is a backward pass (the
    # forward's chain again) summed over the batch's tokens: chain_tol of both, at the
    # leaf's largest entry (numerics).
    terms = 2 * forward_terms(cfg, ids.shape[1] + tokens.shape[1], log_softmax=True) + mask.size
    for a, b in zip(jax.tree.leaves(acc), jax.tree.leaves(whole), strict=True):
        tol = chain_tol(np.float32, terms) * np.abs(np.asarray(b)).max()
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=0)
    assert any(np.any(np.asarray(a) != 0) for a in jax.tree.leaves(acc))


@pytest.mark.slow
def test_grpo_increases_a_toy_reward(tiny):
    """Reward: the fraction of even token ids in the completion (about 1/2 at the start)."""
    cfg = tiny.config
    task = tasks.get_task("countdown")
    prompts = scoring.encode(task, task.generate(4, seed=1), tiny.tokenizer)
    n, width, key = 8, 8, jax.random.key(0)
    ids, pmask = (np.repeat(x, n, axis=0) for x in prompts)
    even = np.arange(cfg.vocab_size) % 2 == 0
    fixed, _ = grpo.rollout(cfg, tiny.params, prompts.ids, prompts.mask, jax.random.key(99),
                            group_size=n, max_new_tokens=width, ignore_eos=True)  # fmt: skip

    def expected_reward(params):  # exact, on fixed contexts: the mass on even tokens
        full = np.concatenate([ids, fixed], axis=1)
        mask = np.concatenate([pmask, np.ones(fixed.shape, bool)], axis=1)
        logits = models.forward(cfg, params, full, mask)[:, ids.shape[1] - 1 : -1]
        return float((jax.nn.softmax(logits, axis=-1) * even).sum(-1).mean())

    opt = grpo.make_optimizer(learning_rate=3e-2, weight_decay=0.0)
    apply_fn = grpo.make_apply_fn(opt)
    params = jax.tree.map(jnp.copy, tiny.params)
    opt_state = opt.init(params)
    expected = [expected_reward(params)]
    for t in range(5):
        tokens, _ = grpo.rollout(cfg, params, prompts.ids, prompts.mask, jax.random.fold_in(key, t),
                                 group_size=n, max_new_tokens=width, ignore_eos=True)  # fmt: skip
        r = (tokens % 2 == 0).mean(axis=1)  # [P*n]
        adv = np.asarray(grpo.group_advantages(r.reshape(-1, n))).reshape(-1)
        batch = grpo.Rollout(ids, pmask, tokens, np.ones(tokens.shape, bool), adv)
        params, opt_state, m = grpo.update(
            cfg, params, opt_state, tiny.params, batch, apply_fn=apply_fn, mini_batch_rows=2 * n,
            micro_batch_size=2 * n, clip_eps=0.2, kl_coef=0.0,
        )  # fmt: skip
        assert m["num_updates"] == 2
        expected.append(expected_reward(params))
    assert abs(expected[0] - 0.5) < 0.02
    assert expected[-1] > expected[0] + 0.08, expected
    assert np.mean(expected[-2:]) > np.mean(expected[1:3]), expected  # still rising


# ---------------------------------------------------------------------------------------
# The trainer: configs/grpo_default.py on the tiny model.
# ---------------------------------------------------------------------------------------


def tiny_config(workdir, tiny_dir, **overrides):
    return tiny_model.tiny_config(workdir, tiny_dir, method="grpo", **overrides)


train = tiny_model.tiny_train


def test_two_step_run_of_grpo_default_through_run_main(tmp_path, tiny_dir, monkeypatch):
    import types

    workdir = tmp_path / "run"
    c = tiny_config(workdir, tiny_dir, **{"grpo.learning_rate": 1e-5})  # grpo_default's lr
    # experiments.run's own dispatch (method="grpo"), in process so jit caches are shared
    monkeypatch.setattr(run_cli, "_CONFIG", types.SimpleNamespace(value=c))
    run_cli.main([])
    run = RunDir(workdir)
    rows = run.metrics.rows()
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for key in ("loss", "reward_mean", "reward_std", "accuracy", "kl", "clip_fraction",
                "grad_norm", "time/rollout", "time/update", "eval/accuracy"):  # fmt: skip
        assert key in rows[2], key
    assert rows[1]["num_updates"] == 2 and rows[1]["reward_std"] > 0
    assert rows[2]["drift_norm"] > rows[1]["drift_norm"] > 0
    assert rows[2]["kl"] > 0 and rows[1]["grad_norm"] > 0
    assert "eval/accuracy" in rows[0]
    assert sorted(run.all_steps()) == [1, 2]
    # the ES run directory reads GRPO checkpoints: the final export equals checkpoint 2
    theta0 = models.load(tiny_dir).params
    final, meta = run.restore(2, theta0)
    assert meta["iteration"] == 2
    assert_bitwise(models.load(workdir / "final").params, final)
    assert any(np.any(x != y) for x, y in zip(leaves(final), leaves(theta0), strict=True))


@pytest.mark.slow
def test_resume_is_bitwise_equal(tmp_path, tiny_dir):  # same programs, same inputs
    fast = {"eval.num_examples": 0, "log.tensorboard": False, "export": False}
    straight = train(tiny_config(tmp_path / "a", tiny_dir, **{**fast, "grpo.num_steps": 2}))
    train(tiny_config(tmp_path / "b", tiny_dir, **{**fast, "grpo.num_steps": 1}))
    resumed = train(tiny_config(tmp_path / "b", tiny_dir, **{**fast, "grpo.num_steps": 2}))
    assert_bitwise(resumed, straight)
    params = models.load(tiny_dir).params
    opt = grpo.make_optimizer(learning_rate=1e-3)
    like = opt.init(params)
    opt_a = RunDir(tmp_path / "a").restore(2, params, extra_like={"opt_state": like})[2]
    opt_b = RunDir(tmp_path / "b").restore(2, params, extra_like={"opt_state": like})[2]
    assert_bitwise(opt_a, opt_b)  # AdamW's moments and count too
    assert int(jax.tree.leaves(opt_a)[0]) == 4  # 2 steps x 2 mini-batches
    rows = RunDir(tmp_path / "b").metrics.rows()
    assert [r["iteration"] for r in rows] == [1, 2]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"grpo.group_size": 1}, r"grpo.group_size=1.*at least 2"),
        ({"grpo.prompts_per_step": 9}, r"grpo.prompts_per_step=9.*task.num_train=8"),
        ({"grpo.mini_batch_size": 5}, r"grpo.mini_batch_size=5.*at most 4"),
        ({"grpo.clip_eps": 1.5}, r"grpo.clip_eps=1.5.*\(0, 1\)"),
        ({"grpo.kl_coef": -1.0}, r"grpo.kl_coef=-1.0.*>= 0"),
        ({"grpo.learning_rate": 0.0}, r"grpo.learning_rate=0.0.*positive"),
        ({"grpo.temperature": 0.0}, r"grpo.temperature=0.0.*positive"),
        ({"task.name": "piqa"}, r"task.name='piqa'.*target task"),
    ],
)
def test_bad_configs_are_refused_before_loading(tmp_path, tiny_dir, monkeypatch, overrides, match):
    tiny_model.assert_refused_before_loading(
        tiny_config(tmp_path / "run", tiny_dir, **overrides), match, monkeypatch
    )


def test_resuming_with_a_different_config_is_refused(tmp_path, tiny_dir, monkeypatch):
    (tmp_path / "run").mkdir()
    stored = tiny_config(tmp_path / "run", tiny_dir).to_dict()
    RunDir(tmp_path / "run").write_config(stored)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(settings.ConfigError, match=r"grpo.kl_coef=0.001.*grpo.kl_coef=0.01"):
        train(tiny_config(tmp_path / "run", tiny_dir, **{"grpo.kl_coef": 0.01}))
    # more steps or another micro-batch size may resume
    settings.check_resumable(
        stored,
        tiny_config(tmp_path / "run", tiny_dir, **{"grpo.num_steps": 9,
                                                  "grpo.micro_batch_size": 2}).to_dict(),
        workdir="run",
    )  # fmt: skip


def test_default_config_targets_smollm2_and_is_valid():
    c = grpo_default.get_config()
    s = settings.from_config(c)
    settings.check(s)
    assert c.method == "grpo" and s.model.name == "smollm2-135m-instruct"
    assert "es" not in c and "awd" not in c  # no keys that GRPO would silently ignore


# Every paper config built and checked against the reference's scripts: test_paper_configs.py.


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["countdown_qwen3b", "gsm8k_qwen3b", "proofwriter_qwen3b"])
def test_paper_configs_tiny_dry_run(tmp_path, variant, request):
    data_dir = os.environ.get("ESAWD_DATA_DIR")
    if not data_dir:
        pytest.skip("set ESAWD_DATA_DIR to the benchmark data folder (e.g. ../shared/data)")
    c = grpo_paper.get_config(variant)
    c.workdir = str(tmp_path / "run")
    c.model.name = str(request.getfixturevalue("tiny_qwen2_dir"))  # Qwen2 shape: q/k/v biases
    c.model.compute_dtype = "bfloat16"  # the paper's compute dtype, float32 masters
    c.task.data_dir = data_dir
    c.task.num_train = 2
    c.task.max_new_tokens = 3
    c.grpo.prompts_per_step = 2
    c.grpo.group_size = 2
    c.grpo.mini_batch_size = 2  # one update: a single compile of the bfloat16 gradient
    c.grpo.num_steps = 1
    c.eval.num_examples = 1
    c.log.progress = False
    c.log.tensorboard = False
    params = train(c)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    rows = RunDir(c.workdir).metrics.rows()
    assert rows[-1]["iteration"] == 1 and rows[-1]["num_updates"] == 1
