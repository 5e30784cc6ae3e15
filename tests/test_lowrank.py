"""Low-rank noise (es.noise_rank, EGGROLL): the noise, the update against numpy, the factored
forward and batched population decoding against dense perturbed parameters, the trainer
(sharded, resumed, replayed), and the toy random walk."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import tiny_model
from numerics import assert_greedy_picks, assert_same_greedy, assert_sum_close, logit_tol
from test_es import make_params, to_np
from tiny_model import assert_bitwise, leaves, optimized_xla

from esawd import es, models, sampling, settings, toy
from esawd.es import method as es_method
from esawd.models import decoder
from esawd.rundir import RunDir

RANKS = (1, 3)


def factors(params, seed, rank):
    """Every 2-D slice's (A / sqrt(r), B) as numpy float64, from member_perturbation(sigma=1)."""
    pert = es.member_perturbation(params, seed, sigma=1.0, rank=rank)
    return jax.tree.map(lambda x: np.asarray(x, np.float64), pert)


def is_factor(x):
    return isinstance(x, dict) and set(x) == {"a", "b"}


def dense_from_factors(f):
    """numpy E = (A / sqrt(r)) B^T for every factor pair (stacked: per layer)."""
    return np.einsum("...mr,...nr->...mn", f["a"], f["b"])


# ---------------------------------------------------------------------------------------
# The noise.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", RANKS)
def test_sample_noise_is_the_factors_product_and_other_leaves_stay_full_rank(rank):
    params = make_params()
    for seed in (0, 7, 2**31 - 5):
        noise = to_np(es.sample_noise(params, seed, rank=rank))
        full = to_np(es.sample_noise(params, seed))
        f = factors(params, seed, rank)
        # matrices: embed [11, 7] and each layer of layers/w [3, 7, 5]
        for got, fac in ((noise["embed"], f["embed"]), (noise["layers"]["w"], f["layers"]["w"])):
            assert is_factor(fac)
            want = dense_from_factors(fac)
            scale = np.einsum("...mr,...nr->...mn", np.abs(fac["a"]), np.abs(fac["b"]))
            assert_sum_close(got, want, scale=scale, dtype=np.float32, terms=rank + 1)
            for layer in np.reshape(got, (-1, *got.shape[-2:])):
                assert np.linalg.matrix_rank(layer, tol=1e-4 * np.abs(layer).max()) == rank
        # norm scales and biases: the full-rank draw, bit for bit
        np.testing.assert_array_equal(noise["layers"]["scale"], full["layers"]["scale"])
        np.testing.assert_array_equal(noise["head"]["bias"], full["head"]["bias"])


def test_lowrank_entries_have_unit_variance_and_seeds_differ():
    params = {"w": jnp.zeros((256, 192)), "layers": {"w": jnp.zeros((4, 96, 160))}}
    for rank in (1, 4, 16):
        a = np.asarray(es.sample_noise(params, 3, rank=rank)["w"])
        b = np.asarray(es.sample_noise(params, 4, rank=rank)["w"])
        # entries are sums of r products of independent normals / sqrt(r): mean 0, variance 1;
        # rows share factors, so the spread is that of 256 + 192 draws, not 49k
        assert abs(a.mean()) < 0.1 and abs(a.var() - 1) < 0.25, (rank, a.mean(), a.var())
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.05
        layers = np.asarray(es.sample_noise(params, 3, rank=rank)["layers"]["w"])
        assert abs(np.corrcoef(layers[0].ravel(), layers[1].ravel())[0, 1]) < 0.05


@pytest.mark.parametrize("rank", RANKS)
def test_a_slice_regenerates_alone(rank):
    params = make_params()
    noise = es.sample_noise(params, 11, rank=rank)
    path = (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("w"))
    for layer in range(3):
        alone = es.slice_noise(11, path, (3, 7, 5), layer=layer, rank=rank)
        np.testing.assert_array_equal(alone, noise["layers"]["w"][layer])
    embed = es.slice_noise(11, (jax.tree_util.DictKey("embed"),), (11, 7), rank=rank)
    np.testing.assert_array_equal(embed, noise["embed"])


def test_bad_ranks_are_refused_with_the_fix():
    params = make_params()
    with pytest.raises(ValueError, match="rank=-1 must be an int >= 0"):
        es.sample_noise(params, 0, rank=-1)
    with pytest.raises(ValueError, match="needs rank >= 1"):
        es.member_perturbation(params, 0, sigma=1e-3, rank=0)
    with pytest.raises(ValueError, match="factored=True needs low-rank noise"):
        es.evaluate_population(lambda p, k: 0.0, params, np.arange(2), sigma=1.0, factored=True)


# ---------------------------------------------------------------------------------------
# Perturbation and update against numpy.
# ---------------------------------------------------------------------------------------


def np_dtype(like):
    return ml_dtypes.bfloat16 if like.dtype == jnp.bfloat16 else np.float32


def cast_np(x, like):
    return np.asarray(x).astype(np_dtype(like)).astype(np.float64)


@pytest.mark.parametrize("rank", RANKS)
def test_perturb_and_update_match_numpy(rank):
    params = make_params(1)  # stacked leaf, a bfloat16 leaf, a bias
    sigma, alpha, k = 0.05, 0.02, 5
    seeds = np.asarray(es.iteration_seeds(base_seed=3, iteration=1, population_size=k))
    coeffs = np.linspace(-1.5, 1.5, k).astype(np.float32)
    theta = to_np(params)
    eps = []
    for s in seeds:
        f = factors(params, int(s), rank)
        full = to_np(es.sample_noise(params, int(s)))
        eps.append(
            jax.tree.map(
                lambda fac, e: dense_from_factors(fac) if is_factor(fac) else e,
                f,
                full,
                is_leaf=is_factor,
            )  # fmt: skip
        )
    # perturb: theta + sigma * E, rounded once to each leaf's dtype
    got = to_np(es.perturb(params, int(seeds[0]), sigma=sigma, rank=rank))
    want = jax.tree.map(lambda t, e, p: cast_np(t + sigma * e, p), theta, eps[0], params)
    for g, w, t, e, p in zip(
        leaves(got), leaves(want), leaves(theta), leaves(eps[0]), leaves(params), strict=True
    ):
        scale = np.abs(t) + sigma * np.abs(e)
        assert_sum_close(g, w, scale=scale, dtype=np_dtype(p), terms=rank + 2)
    # es_update and the fused es_step (+ L2 AWD): theta + alpha / N sum_k c_k E_k
    step = jax.tree.map(lambda *e: sum(c * x for c, x in zip(coeffs, e, strict=True)), *eps)
    size = jax.tree.map(
        lambda t, *e: np.abs(t)
        + alpha / k * sum(abs(c) * np.abs(x) for c, x in zip(coeffs, e, strict=True)),
        theta, *eps,
    )  # fmt: skip
    updated = jax.tree.map(lambda t, d: t + alpha / k * d, theta, step)
    got = es.es_update(params, seeds, coeffs, alpha=alpha, population_size=k, rank=rank)
    for g, w, sc, p in zip(leaves(got), leaves(updated), leaves(size), leaves(params), strict=True):
        assert_sum_close(g, cast_np(w, p), scale=sc, dtype=np_dtype(p), terms=k * (rank + 1) + 2)
    anchor = es.host_anchor(params)
    lam = 5.0
    decayed = jax.tree.map(lambda u, a: a + (1 - alpha * lam) * (u - a), updated, theta)
    fused, _ = es.es_step(
        jax.tree.map(jnp.copy, params), anchor, seeds, coeffs, alpha=alpha, population_size=k,
        lam=lam, kind="l2", rank=rank,
    )  # fmt: skip
    for g, w, sc, p in zip(
        leaves(fused), leaves(decayed), leaves(size), leaves(params), strict=True
    ):
        assert_sum_close(
            g, cast_np(w, p), scale=2 * sc, dtype=np_dtype(p), terms=k * (rank + 1) + 6
        )
    # the low-rank update is not the full-rank one: the rank keyword reached the kernels
    dense = es.es_update(params, seeds, coeffs, alpha=alpha, population_size=k)
    assert np.abs(np.asarray(dense["embed"]) - np.asarray(got["embed"])).max() > 1e-3


def test_update_has_rank_up_to_members_times_rank():
    params = {"w": jnp.zeros((64, 48))}
    seeds = np.arange(5, dtype=np.uint32)
    coeffs = np.array([1.0, -0.5, 0.3, 2.0, -1.0], np.float32)
    for rank in (1, 2):
        new = es.es_update(params, seeds, coeffs, alpha=1.0, population_size=5, rank=rank)
        w = np.asarray(new["w"])
        assert np.linalg.matrix_rank(w, tol=1e-4 * np.abs(w).max()) == 5 * rank


# ---------------------------------------------------------------------------------------
# The factored forward and batched population decoding, against dense perturbed params.
# ---------------------------------------------------------------------------------------


def tiny_config(arch):
    return models.ModelConfig(
        arch=arch, vocab_size=101, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
        head_dim=8, d_ff=48, rope_theta=1e4, max_position=256,
        tie_embeddings=arch == "llama", qkv_bias=arch == "qwen2", eos_ids=(1,),
    )  # fmt: skip


def peaky_params(config, seed=0):
    params = models.init_params(config, jax.random.key(seed))
    return jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)


@pytest.mark.parametrize("arch,rank", [("llama", 1), ("qwen2", 3)])  # qwen2: head, biases
def test_factored_forward_equals_dense_perturbed_params(arch, rank):
    config = tiny_config(arch)
    params = peaky_params(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 101, (3, 9)), jnp.int32)
    mask = jnp.ones((3, 9), bool).at[0, :3].set(False)
    for seed, sign in ((5, 1.0), (6, -1.0)):
        dense = es.perturb(params, seed, sigma=0.05, sign=sign, rank=rank)
        pert = es.member_perturbation(params, seed, sigma=0.05, sign=sign, rank=rank)
        want = np.asarray(decoder.forward(config, dense, ids, mask))
        got = np.asarray(decoder.forward(config, params, ids, mask, perturbation=pert))
        base = np.asarray(decoder.forward(config, params, ids, mask))
        tol = logit_tol(config, 9, np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
        assert np.abs(want - base).max() > 100 * tol  # the perturbation is not lost


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("unroll", [True, False])
def test_population_decodes_as_each_member_alone(arch, unroll):
    config = tiny_config(arch)
    params = peaky_params(config)
    ids, mask = sampling.left_pad([[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]])
    seeds = jnp.asarray([10, 11, 12, 13], jnp.uint32)
    signs = jnp.asarray([1.0, -1.0, 1.0, 1.0])
    pert = jax.vmap(lambda s, g: es.member_perturbation(params, s, sigma=0.2, sign=g, rank=2))(
        seeds, signs
    )
    tokens, lengths = sampling.generate(
        config, params, ids, mask, max_new_tokens=10, unroll_layers=unroll, perturbation=pert
    )
    assert tokens.shape == (4, 3, 10) and lengths.shape == (4, 3)
    for m in range(4):
        dense = es.perturb(params, seeds[m], sigma=0.2, sign=signs[m], rank=2)
        alone, alone_len = sampling.generate(
            config, dense, ids, mask, max_new_tokens=10, unroll_layers=unroll
        )
        # teacher-forced logits of the member's own decode, for the near-tie check
        cont = np.asarray(alone)
        full = jnp.concatenate([jnp.asarray(ids), alone], axis=1)
        full_mask = jnp.concatenate([jnp.asarray(mask), jnp.ones(cont.shape, bool)], axis=1)
        logits = np.asarray(decoder.forward(config, dense, full, full_mask))
        logits = logits[:, ids.shape[1] - 1 : -1]
        tol = logit_tol(config, full.shape[1], np.abs(logits).max())
        assert_greedy_picks(np.asarray(tokens[m]), logits, tol=tol)
        assert_same_greedy(cont, np.asarray(tokens[m]), logits, tol=tol)
    # the members differ from each other: each got its own factors
    assert len({np.asarray(tokens[m]).tobytes() for m in range(4)}) == 4


@pytest.mark.slow
def test_factored_population_evaluation_equals_dense(four_devices):
    config = tiny_config("llama")
    params = peaky_params(config)
    ids, mask = sampling.left_pad([[3, 4, 5, 6, 7], [8, 9]])
    dense_fn = es_method.make_generate_fn(config, ids, mask, max_new_tokens=6)
    batch_fn = es_method.make_population_generate_fn(config, ids, mask, max_new_tokens=6)
    seeds = np.arange(20, 25, dtype=np.uint32)  # 5 members: padded onto 4 devices
    kw = dict(sigma=0.2, rank=2, antithetic=True)
    want, _ = es.evaluate_population(dense_fn, params, seeds, **kw)
    # 10 members: 4 devices x 2 batches of 2 (padded to 16); 1 device x 4 batches of 3 (to 12)
    layouts = [(four_devices, 2), (four_devices[:1], 3)]
    for devices, per_batch in layouts:
        mesh = es.population_mesh(devices)
        got, _ = es.evaluate_population(
            batch_fn, params, seeds, mesh=mesh, members_per_batch=per_batch, factored=True, **kw
        )
        assert got.shape == (2, 5, 2, 6)
        # exact tokens: the tiny model's peaky logits leave no near-ties at this sigma
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------
# The trainer with es.noise_rank > 0.
# ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _varied_reward(varied_reward):
    """Every test here runs with Countdown's reward varying with the text (conftest)."""


def lowrank_config(workdir, tiny_dir, **overrides):
    return tiny_model.tiny_config(workdir, tiny_dir, **{"es.noise_rank": 2, **overrides})


train = tiny_model.tiny_train


@pytest.mark.slow
def test_trainer_resumes_and_replays_bitwise_and_refuses_a_changed_rank(tmp_path, tiny_dir):
    straight = train(lowrank_config(tmp_path / "a", tiny_dir, **{"es.num_iterations": 3}))
    train(lowrank_config(tmp_path / "b", tiny_dir, **{"es.num_iterations": 1}))
    resumed = train(lowrank_config(tmp_path / "b", tiny_dir, **{"es.num_iterations": 3}))
    # the same programs on the same inputs
    assert_bitwise(resumed, straight)
    run = RunDir(tmp_path / "a")
    rows = run.es_log.rows()
    assert [r["noise_rank"] for r in rows] == [2, 2, 2]
    assert RunDir(tmp_path / "a").metrics.rows()[-1]["reward_std"] > 0
    theta0 = models.load(tiny_dir).params
    assert_bitwise(es_method.replay(theta0, rows, upto=3), straight)
    # the full-rank update of the same log is another model: the rank is what replay used
    full = [{**r, "noise_rank": 0} for r in rows]
    assert any(
        np.any(x != y)
        for x, y in zip(
            leaves(es_method.replay(theta0, full, upto=3)), leaves(straight), strict=True
        )
    )
    with pytest.raises(settings.ConfigError, match="es.noise_rank=2.*es.noise_rank=4"):
        train(lowrank_config(tmp_path / "a", tiny_dir, **{"es.noise_rank": 4}))


@pytest.mark.slow
def test_trainer_sharded_over_four_devices_equals_one(tmp_path, tiny_dir, four_devices):
    kw = {"es.population_size": 8, "es.members_per_batch": 2}
    four = train(lowrank_config(tmp_path / "four", tiny_dir, **{"es.num_devices": 4, **kw}))
    one = train(lowrank_config(tmp_path / "one", tiny_dir, **{"es.num_devices": 1, **kw}))
    # Each batch of 2 members is the same program on either mesh, and the update sees only
    # rewards of decoded text: bitwise equal.
    assert_bitwise(four, one)
    base = models.load(tiny_dir).params
    assert any(np.any(x != y) for x, y in zip(leaves(base), leaves(four), strict=True))


def test_es_log_rows_without_noise_rank_replay_as_full_rank():
    row = {"alpha": 0.1, "population_size": 2, "lam": 0.0, "kind": "none", "noise_sharing": "none"}
    assert es_method.es_log_settings(row)["rank"] == 0
    assert es_method.es_log_settings({**row, "noise_rank": 4})["rank"] == 4


def test_bad_noise_rank_is_refused_before_loading(tmp_path, tiny_dir, monkeypatch):
    c = lowrank_config(tmp_path / "bad", tiny_dir, **{"es.noise_rank": -2})
    tiny_model.assert_refused_before_loading(c, "es.noise_rank=-2 is invalid", monkeypatch)


def test_a_run_made_before_noise_rank_existed_still_resumes():
    stored = settings.to_dict(settings.defaults("es"))
    del stored["es"]["noise_rank"]
    current = settings.to_dict(settings.defaults("es"))
    settings.check_resumable(stored, current, workdir="old")  # the default: accepted
    current["es"]["noise_rank"] = 4
    with pytest.raises(settings.ConfigError, match="es.noise_rank=0.*es.noise_rank=4"):
        settings.check_resumable(stored, current, workdir="old")


def test_lowrank_member_memory_is_the_cache_not_the_weights():
    config = models.PRESETS["smollm2-135m-instruct"][1]
    kw = dict(batch=32, width=150, max_new_tokens=128)
    full = es_method.member_bytes(config, **kw)
    low = es_method.member_bytes(config, **kw, rank=4)
    # the perturbed float32 copy and the decode layout's copy (+ a cast between, in bf16):
    # 8 bytes per parameter either way (4 + 4 in float32, 4 + 2 + 2 in bfloat16)
    weights = config.num_params() * 8
    assert full - low > 0.9 * weights  # a low-rank member brings no weight copy
    # (m + n) r per matrix: the embedding alone has (49152 + 576) * 4
    elements = es_method.perturbation_elements(config, 4)
    assert (49152 + 576) * 4 < elements < config.num_params() / 20

    class Host:  # a device that reports no memory limit (the CPU)
        def memory_stats(self):
            return None

    pick = es_method.members_per_batch_for
    assert pick(Host(), member_bytes=low, members=8) == 1  # full rank's rule: one at a time
    assert pick(Host(), member_bytes=100, members=8, host_bytes=1000) == 8  # 800 of 1000 fit
    assert pick(Host(), member_bytes=100, members=8, host_bytes=500) == 4  # 80 % of 500


# ---------------------------------------------------------------------------------------
# The toy random walk with low-rank noise.
# ---------------------------------------------------------------------------------------

TOY = dict(num_iterations=200, dim=2000, num_constrained=10, alpha=5e-4, sigma=1e-3, noise_rank=1)


@pytest.fixture(scope="module")
def toy_runs():
    with optimized_xla():  # 600 ES iterations: compute-bound (tests/conftest.py)
        return {
            "n8": toy.run_random_walk(population_size=8, **TOY),
            "n32": toy.run_random_walk(population_size=32, **TOY),
            "awd": toy.run_random_walk(population_size=8, lam=20.0, kind="l2", **TOY),
        }


def test_lowrank_toy_drift_grows_like_t_over_n_and_awd_bounds_it(toy_runs):
    for name, n in (("n8", 8), ("n32", 32)):
        r = toy_runs[name]
        pred = toy.predicted_drift(
            r.iterations[1:], population_size=n, dim=2000, num_constrained=10, alpha=5e-4
        )
        np.testing.assert_allclose(r.drift_perp[1:], pred, rtol=0.2)
    end = lambda r: float(r.drift_perp[-1])
    assert end(toy_runs["n8"]) > 1.6 * end(toy_runs["n32"])  # expected sqrt(4) = 2
    awd = toy_runs["awd"]
    bound = toy.predicted_drift(
        awd.iterations[-1:], population_size=8, dim=2000, num_constrained=10, alpha=5e-4,
        lam=20.0,
    )[0]  # fmt: skip
    assert end(awd) < 0.6 * end(toy_runs["n8"]) and abs(end(awd) / bound - 1) < 0.25
    assert toy_runs["n8"].loss[-1] < 0.5 * toy_runs["n8"].loss[0]  # the reward is still learnt


def test_toy_refuses_a_dim_the_matrix_cannot_hold():
    with pytest.raises(ValueError, match="multiple of matrix_rows"):
        toy.run_random_walk(population_size=2, num_iterations=1, dim=2001, noise_rank=1)


@pytest.mark.slow
def test_analysis_replays_a_lowrank_run(tmp_path, tiny_dir):
    from esawd import analysis

    overrides = {"es.num_iterations": 3, "checkpoint.interval": 2, "eval.num_examples": 0}
    c = lowrank_config(tmp_path / "run", tiny_dir, **overrides)
    train(c)
    s = analysis.AnalysisSettings(
        tasks=("countdown",), num_examples=4, max_new_tokens=5, batch_size=4,
        iterations=(0, 1, 3), kl_prompts=4, kl_max_new_tokens=6,
    )  # fmt: skip
    out = analysis.analyze_run(c.workdir, s, progress=False)
    drift = {r["iteration"]: r["frobenius"] for r in out[analysis.DRIFT_FILE]}
    logged = {r["iteration"]: r["drift_norm"] for r in RunDir(c.workdir).metrics.rows()}
    # iteration 1 has no checkpoint: theta_1 is replayed from the ES log at rank 2, so its
    # drift equals the one the trainer measured (float32 per-slice sums vs float64)
    for t in (1, 3):
        assert drift[t] == pytest.approx(logged[t], rel=1e-5)
    kl = {r["iteration"]: r["kl"] for r in out[analysis.KL_FILE]}
    assert kl[0] == 0.0 and kl[3] != 0.0  # k1 on 4 prompts: unbiased, either sign
