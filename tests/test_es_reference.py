"""The reproduction switches (esawd.es.reference, noise_sharing="reference"): the reference's
float16 in-place dynamics against a numpy model of its torch ops, its fused-layout noise, and
the trainer with both switches on (resumed and replayed bitwise)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_model
from tiny_model import assert_bitwise, leaves

from esawd import es, models, settings
from esawd.es import method as es_method
from esawd.es import noise as noise_mod
from esawd.rundir import RunDir

F16, F32 = np.float16, np.float32

# ---------------------------------------------------------------------------------------
# A numpy model of the reference's torch ops (weight_update_utils.py): one float16 rounding
# per in-place op, each computed in float32 (torch's opmath for half tensors).
# ---------------------------------------------------------------------------------------


def np_add(x, scale, y):  # x.add_(y, alpha=scale)
    return (x.astype(F32) + F32(scale) * y.astype(F32)).astype(F16)


def np_reference_iteration(p, p0, noises, coeffs, trips, *, sigma, alpha, n, lam, kind):
    """One iteration on float16 arrays; `noises[k]`/`trips` are float16 noise arrays."""
    for noise, sign in trips:  # engine 0: perturb, generate, restore
        p = np_add(p, sign * sigma, noise)
        p = np_add(p, -sign * sigma, noise)
    acc = np.zeros_like(p)
    for noise, c in zip(noises, coeffs, strict=True):
        acc = np_add(acc, c, noise)
    p = np_add(p, F32(alpha / n), acc)
    if kind == "none":
        return p
    d = (p.astype(F32) - p0.astype(F32)).astype(F16)  # parameter.sub_(reference)
    if kind == "l2":
        d = (d.astype(F32) * F32(1.0 - F32(alpha * lam))).astype(F16)  # mul_(1 - step)
    else:
        shrunk = (np.abs(d).astype(F32) - F32(alpha * lam)).astype(F16)  # abs(p) - step
        d = np.sign(d) * np.maximum(shrunk, F16(0))  # sign * clamp(min=0)
    return (d.astype(F32) + p0.astype(F32)).astype(F16)  # parameter.add_(reference)


def llm_like_tree(seed=0):
    """float16 weights of LLM magnitude (|w| ~ 0.02; norm scales ~ 1)."""
    rng = np.random.default_rng(seed)
    return {
        "layers": {
            "w": jnp.asarray((0.02 * rng.normal(size=(3, 7, 5))).astype(F16)),
            "scale": jnp.asarray((1 + 0.1 * rng.normal(size=(3, 5))).astype(F16)),
        },
        "embed": jnp.asarray((0.02 * rng.normal(size=(11, 5))).astype(F16)),
    }


@pytest.mark.parametrize(
    "kind,lam,engines,antithetic",
    [("l2", 10.0, 2, False), ("l1", 0.01, 3, False), ("none", 0.0, 1, True), ("l2", 40.0, 8, True)],
)
@pytest.mark.parametrize("noise_sharing", ["none", "reference"])
def test_reference_step_equals_numpy_model_of_the_torch_ops(
    kind, lam, engines, antithetic, noise_sharing
):
    p0 = llm_like_tree()
    # theta after some training: a few float16 steps away from theta_0
    p = jax.tree.map(
        lambda x: np_add(
            np.asarray(x), 2e-4, np.asarray(jax.random.normal(jax.random.key(1), x.shape))
        ),
        p0,
    )
    k = 4
    seeds = np.asarray(es.iteration_seeds(base_seed=3, iteration=1, population_size=k))
    coeffs = es.normalize_rewards(np.array([0.1, 0.7, 0.3, 0.2]))
    n = 2 * k if antithetic else k
    sigma, alpha = 1e-3, 5e-4
    got, metrics = es.reference_step(
        jax.tree.map(jnp.asarray, p), es.host_anchor(p0), seeds, coeffs, alpha=alpha,
        population_size=n, sigma=sigma, engines=engines, antithetic=antithetic, lam=lam,
        kind=kind, noise_sharing=noise_sharing,
    )  # fmt: skip
    noise = [
        jax.tree.map(
            lambda x: np.asarray(x).astype(F16), es.sample_noise(p0, s, noise_sharing=noise_sharing)
        )
        for s in seeds
    ]
    trip_ids = list(range(0, k, engines))
    trip_list = [(i, 1.0) for i in trip_ids] + ([(i, -1.0) for i in trip_ids] if antithetic else [])
    flat_p, treedef = jax.tree_util.tree_flatten(p)
    flat_p0 = jax.tree.leaves(p0)
    out = []
    for j, (x, x0) in enumerate(zip(flat_p, flat_p0, strict=True)):
        nz = [jax.tree.leaves(noise[i])[j] for i in range(k)]
        trips = [(nz[i], s) for i, s in trip_list]
        kw = {"sigma": sigma, "alpha": alpha, "n": n, "lam": lam, "kind": kind}
        out.append(np_reference_iteration(np.asarray(x), np.asarray(x0), nz, coeffs, trips, **kw))
    want = jax.tree_util.tree_unflatten(treedef, out)
    for g, w in zip(leaves(got), leaves(want), strict=True):
        assert g.dtype == np.float16
        np.testing.assert_array_equal(g, w)
    drift = np.sqrt(sum(np.sum((w.astype(np.float64) - a.astype(np.float64)) ** 2)
                        for w, a in zip(leaves(want), leaves(p0), strict=True)))  # fmt: skip
    assert metrics["drift_norm"] == pytest.approx(drift, rel=1e-5)


def test_residue_trips_are_engine_zeros_members():
    seeds = np.arange(10, 40, dtype=np.uint32)  # N = 30, as in the paper
    trips, signs = es.residue_trips(seeds, engines=8, antithetic=False)
    np.testing.assert_array_equal(trips, [10, 18, 26, 34])
    np.testing.assert_array_equal(signs, [1, 1, 1, 1])
    trips, signs = es.residue_trips(seeds[:4], engines=3, antithetic=True)
    np.testing.assert_array_equal(trips, [10, 13, 10, 13])
    np.testing.assert_array_equal(signs, [1, 1, -1, -1])
    with pytest.raises(ValueError, match="engines=0"):
        es.residue_trips(seeds, engines=0, antithetic=False)


def test_perturb_restore_round_trip_leaves_a_residue_and_l2_has_a_dead_zone():
    w = (0.02 * np.random.default_rng(0).normal(size=(8192,))).astype(F16)
    p0 = {"w": jnp.asarray(w)}
    seeds = np.array([5, 6], np.uint32)
    zero = np.zeros(2, np.float32)
    # No update (zero coefficients), no decay: only engine 0's one round trip (seed 5).
    after, _ = es.reference_step(p0, es.host_anchor(p0), seeds, zero, alpha=5e-4,
                                 population_size=2, sigma=1e-3, engines=2)  # fmt: skip
    moved = np.asarray(after["w"]) != w
    # fp16(p + sigma n) - sigma n rounds back to p while p + sigma n stays in p's binade (the
    # rounding error is under half a step there); where it lands in a coarser binade the
    # restore misses by up to half a step of that binade: the residue.
    n = np.asarray(es.sample_noise(p0, 5)["w"]).astype(F16)
    perturbed = np_add(w, 1e-3, n)
    crossed = np.spacing(np.abs(perturbed)) > np.spacing(np.abs(w))  # a coarser step
    assert 0.01 < moved.mean() < 0.5
    assert crossed[moved].mean() > 0.95 and moved[~crossed].mean() < 0.01
    # L2 with alpha*lam = 5e-3: a drift of 3 float16 steps at |w| = 0.02 shrinks by 0.015 of a
    # step, which rounds back: the reference never pulls it in. Float32 masters do.
    ulp = float(np.spacing(F16(0.02)))
    anchor = es.host_anchor({"w": jnp.full((8,), 0.02, jnp.float16)})
    p = {"w": jnp.full((8,), F16(0.02) + F16(3 * ulp), jnp.float16)}
    tiny = 1e-12  # sigma * n rounds away: no residue, isolating the decay
    decayed, _ = es.reference_step(p, anchor, seeds, zero,
                                   alpha=5e-4, population_size=2, sigma=tiny, engines=1,
                                   lam=10.0, kind="l2")  # fmt: skip
    np.testing.assert_array_equal(decayed["w"], p["w"])  # the dead zone
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p)
    ours = es.anchored_decay(p32, {"w": jnp.full((8,), F16(0.02), jnp.float32)}, alpha=5e-4,
                             lam=10.0, kind="l2")  # fmt: skip
    assert np.all(np.asarray(ours["w"]) < np.asarray(p32["w"]))
    # A drift of 300 steps is pulled in by the reference too.
    far = {"w": jnp.full((8,), F16(0.02) + F16(300 * ulp), jnp.float16)}
    pulled, _ = es.reference_step(far, anchor, seeds, zero,
                                  alpha=5e-4, population_size=2, sigma=tiny, engines=1,
                                  lam=10.0, kind="l2")  # fmt: skip
    assert np.all(np.asarray(pulled["w"]) < np.asarray(far["w"]))


# ---------------------------------------------------------------------------------------
# noise_sharing="reference": vLLM's fused layout, one stream's leading values per tensor.
# ---------------------------------------------------------------------------------------


def decoder_like_tree():
    z = jnp.zeros
    return {
        "embed": {"embedding": z((11, 6))},
        "layers": {
            "attn": {
                "q_proj": {"kernel": z((2, 6, 4)), "bias": z((2, 4))},
                "k_proj": {"kernel": z((2, 6, 2)), "bias": z((2, 2))},
                "v_proj": {"kernel": z((2, 6, 2)), "bias": z((2, 2))},
                "o_proj": {"kernel": z((2, 4, 6))},
            },
            "mlp": {
                "gate_proj": {"kernel": z((2, 6, 5))},
                "up_proj": {"kernel": z((2, 6, 5))},
                "down_proj": {"kernel": z((2, 5, 6))},
            },
            "attn_norm": {"scale": z((2, 6))},
        },
        "norm": {"scale": z((6,))},
        "lm_head": {"kernel": z((6, 11))},
    }


def test_reference_noise_follows_the_fused_layout_and_shares_leading_values():
    e = jax.tree.map(np.asarray, es.sample_noise(decoder_like_tree(), 3, noise_sharing="reference"))
    stream = np.asarray(noise_mod._stream(jnp.uint32(3), 0, 100))
    attn, mlp = e["layers"]["attn"], e["layers"]["mlp"]
    qkv = stream[: 8 * 6].reshape(8, 6)  # torch's qkv_proj.weight [q + k + v, D]
    for layer in range(2):  # every layer alike, as the reference's per-tensor reseeding
        np.testing.assert_array_equal(attn["q_proj"]["kernel"][layer], qkv[:4].T)
        np.testing.assert_array_equal(attn["k_proj"]["kernel"][layer], qkv[4:6].T)
        np.testing.assert_array_equal(attn["v_proj"]["kernel"][layer], qkv[6:].T)
        np.testing.assert_array_equal(attn["v_proj"]["bias"][layer], stream[:8][6:])
    gate_up = stream[:60].reshape(10, 6)  # gate_up_proj.weight [2F, D]
    np.testing.assert_array_equal(mlp["gate_proj"]["kernel"][0], gate_up[:5].T)
    np.testing.assert_array_equal(mlp["up_proj"]["kernel"][1], gate_up[5:].T)
    np.testing.assert_array_equal(attn["o_proj"]["kernel"][0], stream[:24].reshape(6, 4).T)
    np.testing.assert_array_equal(e["embed"]["embedding"], stream[:66].reshape(11, 6))
    np.testing.assert_array_equal(e["lm_head"]["kernel"], stream[:66].reshape(11, 6).T)
    np.testing.assert_array_equal(e["norm"]["scale"], stream[:6])  # the shared prefix
    np.testing.assert_array_equal(e["layers"]["attn_norm"]["scale"][1], stream[:6])
    # q and o have equal unfused shapes here ([6, 4] vs [4, 6] aside) but the reference never
    # shares them: q is rows of qkv_proj. "shape" sharing on our layout would.
    assert not np.array_equal(attn["q_proj"]["kernel"][0], attn["o_proj"]["kernel"][0].T)
    # a stream chunk boundary changes nothing: any prefix is the same values
    long = np.asarray(noise_mod._stream(jnp.uint32(3), 0, 3 * es.noise.REFERENCE_CHUNK // 2))
    part = np.asarray(noise_mod._stream(jnp.uint32(3), 100, es.noise.REFERENCE_CHUNK + 7))
    np.testing.assert_array_equal(long[: stream.size], stream)
    np.testing.assert_array_equal(part, long[100 : es.noise.REFERENCE_CHUNK + 7])
    assert abs(long.mean()) < 0.02 and abs(long.std() - 1) < 0.02
    other = es.sample_noise(decoder_like_tree(), 4, noise_sharing="reference")
    assert not np.array_equal(np.asarray(other["norm"]["scale"]), e["norm"]["scale"])


def test_reference_noise_refuses_low_rank_and_single_leaves():
    with pytest.raises(ValueError, match="rank=2"):
        es.sample_noise(decoder_like_tree(), 3, noise_sharing="reference", rank=2)
    with pytest.raises(ValueError, match="siblings"):
        es.slice_noise(3, (jax.tree_util.DictKey("w"),), (4, 4), noise_sharing="reference")


def test_es_step_with_reference_noise_equals_its_dense_update():
    params = jax.tree.map(lambda x: x + 0.5, decoder_like_tree())
    seeds = np.array([7, 9], np.uint32)
    coeffs = np.array([1.0, -0.5], np.float32)
    got, _ = es.es_step(jax.tree.map(jnp.copy, params), None, seeds, coeffs, alpha=0.1,
                        population_size=2, noise_sharing="reference")  # fmt: skip
    e = [es.sample_noise(params, s, noise_sharing="reference") for s in seeds]
    want = jax.tree.map(lambda p, a, b: p + 0.05 * (a - 0.5 * b), params, *e)
    for g, w in zip(leaves(got), leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# The trainer with both switches on.
# ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _varied_reward(varied_reward):
    """Every test here runs with Countdown's reward varying with the text (conftest)."""


def reference_config(workdir, tiny_dir, **overrides):
    keys = {"es.precision": "reference_float16", "es.noise_sharing": "reference",
            "es.reference_engines": 2, "model.compute_dtype": "float16"}  # fmt: skip
    return tiny_model.tiny_config(workdir, tiny_dir, **{**keys, **overrides})


@pytest.mark.slow
def test_trainer_with_reference_dynamics_resumes_and_replays_bitwise(tmp_path, tiny_dir):
    train = tiny_model.tiny_train
    straight = train(reference_config(tmp_path / "a", tiny_dir, **{"es.num_iterations": 3}))
    assert all(x.dtype == np.float16 for x in leaves(straight))
    train(reference_config(tmp_path / "b", tiny_dir, **{"es.num_iterations": 1}))
    resumed = train(reference_config(tmp_path / "b", tiny_dir, **{"es.num_iterations": 3}))
    assert_bitwise(resumed, straight)
    rows = RunDir(tmp_path / "a").es_log.rows()
    assert [(r["precision"], r["reference_engines"]) for r in rows] == [
        ("reference_float16", 2)
    ] * 3
    theta0 = models.load(tiny_dir).params
    assert_bitwise(es_method.replay(theta0, rows, upto=3), straight)
    # the same log replayed with float32 masters is another model
    f32 = es_method.replay(theta0, [{**r, "precision": "float32"} for r in rows], upto=3)
    assert any(np.any(np.asarray(x, np.float16) != y)
               for x, y in zip(leaves(f32), leaves(straight), strict=True))  # fmt: skip


def test_reference_precision_needs_float16_compute_and_full_rank(tmp_path, tiny_dir, monkeypatch):
    c = reference_config(tmp_path / "x", tiny_dir, **{"model.compute_dtype": "bfloat16"})
    tiny_model.assert_refused_before_loading(c, "model.compute_dtype='bfloat16'", monkeypatch)
    c = reference_config(tmp_path / "y", tiny_dir, **{"es.noise_rank": 2})
    with pytest.raises(settings.ConfigError, match="es.noise_rank=2"):
        settings.check(settings.from_config(c))
    c = reference_config(tmp_path / "z", tiny_dir, **{"es.precision": "fp16"})
    with pytest.raises(settings.ConfigError, match="es.precision='fp16'"):
        settings.check(settings.from_config(c))
