"""Tests for esawd.es against an independent numpy implementation of Algorithm 1."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from numerics import assert_sum_close

from esawd import es
from esawd.es import update as es_update_mod

# A small pytree with mixed shapes, a stacked-layer leaf (prime dims) and a bfloat16 leaf.
SHAPES = {
    "embed": ((11, 7), jnp.float32),
    "layers": {"w": ((3, 7, 5), jnp.float32), "scale": ((3, 5), jnp.bfloat16)},
    "head": {"bias": ((13,), jnp.float32)},
}


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda sd: jnp.asarray(rng.normal(size=sd[0]), sd[1]),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], tuple),
    )


def to_np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def cast_like(tree_np, like):
    """Round a float64 numpy tree to the dtypes of `like`, as the library does."""

    def cast(x, ref):
        dt = ml_dtypes.bfloat16 if ref.dtype == jnp.bfloat16 else np.float32
        return x.astype(dt).astype(np.float64)

    return jax.tree.map(cast, tree_np, like)


def np_fitness(tree):
    """A smooth reward of every leaf (numpy, float64)."""
    leaves = jax.tree.leaves(tree)
    return -sum(float(np.sum((x - 0.3) ** 2) + np.sum(np.sin(3 * x))) for x in leaves)


def jnp_fitness(tree, key):
    del key
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    return -sum(jnp.sum((x - 0.3) ** 2) + jnp.sum(jnp.sin(3 * x)) for x in leaves)


def update_scale(params, seeds, coeffs, *, alpha, population_size, anchor=None):
    """Per entry, the sum of |values| an ES update (+ anchored decay) adds up: |theta| +
    alpha / N sum_n |c_n eps_n| (+ |theta_0|), the scale of its rounding error (numerics)."""
    noise = [es.sample_noise(params, int(s)) for s in np.asarray(seeds)]
    step = jax.tree.map(
        lambda *e: sum(
            abs(float(c)) * np.abs(np.asarray(x)) for c, x in zip(coeffs, e, strict=True)
        ),
        *noise,
    )
    out = jax.tree.map(lambda p, d: np.abs(np.asarray(p, np.float64)) + alpha / population_size * d,
                       params, step)  # fmt: skip
    if anchor is not None:
        out = jax.tree.map(lambda o, a: o + np.abs(np.asarray(a, np.float64)), out, anchor)
    return out


def np_algorithm1(theta, theta0, seeds, rewards, *, sigma, alpha, antithetic, kind, lam, like):
    """One iteration of Algorithm 1 in numpy, noise taken from esawd's generator.

    z-scores `rewards` (the library's, so that the update rule is compared on the same
    rewards) and returns the new theta, numpy's own rewards (to compare the library's
    against) and, per entry, the sum of |values| the iteration adds up (numerics)."""
    eps = [to_np(es.sample_noise(like, int(s))) for s in seeds]
    signs = [1.0, -1.0] if antithetic else [1.0]
    own = np.array(
        [
            [
                np_fitness(
                    cast_like(jax.tree.map(lambda t, e, g=g: t + g * sigma * e, theta, ep), like)
                )
                for ep in eps
            ]
            for g in signs
        ]
    )
    rewards = np.reshape(np.asarray(rewards, np.float64), own.shape)  # [signs, K]
    z = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
    coeffs = z[0] - z[1] if antithetic else z[0]
    n = rewards.size
    step = jax.tree.map(lambda *e: sum(c * x for c, x in zip(coeffs, e, strict=True)), *eps)
    size = update_scale(theta, seeds, coeffs, alpha=alpha, population_size=n, anchor=theta0)
    theta = cast_like(jax.tree.map(lambda t, s: t + alpha / n * s, theta, step), like)
    if kind == "l2":
        theta = jax.tree.map(lambda t, a: a + (1 - alpha * lam) * (t - a), theta, theta0)
    elif kind == "l1":
        theta = jax.tree.map(
            lambda t, a: a + np.sign(t - a) * np.maximum(np.abs(t - a) - alpha * lam, 0),
            theta,
            theta0,
        )
    return cast_like(theta, like), own, size


def fitness_scale(params, seeds, *, sigma, antithetic):
    """Per member, the sum of |terms| of np_fitness at its perturbed parameters (numerics)."""
    theta = to_np(params)

    def size(sign, seed):
        noise = es.sample_noise(params, int(seed))
        x = jax.tree.leaves(jax.tree.map(lambda t, e: t + sign * sigma * np.asarray(e), theta,
                                         noise))  # fmt: skip
        return sum(float(np.sum((y - 0.3) ** 2) + np.sum(np.abs(np.sin(3 * y)))) for y in x)

    signs = [1.0, -1.0] if antithetic else [1.0]
    return np.array([[size(g, s) for s in np.asarray(seeds)] for g in signs])


@pytest.mark.parametrize(
    "antithetic,kind,lam",
    [(False, "none", 0.0), (True, "none", 0.0), (False, "l2", 5.0), (True, "l1", 0.02)],
)
@pytest.mark.parametrize("fused", [False, True])
def test_matches_numpy_algorithm1(antithetic, kind, lam, fused):
    sigma, alpha, k = 0.05, 0.02, 6
    params = make_params()
    theta0_np = to_np(params)
    theta_np = theta0_np
    anchor = es.host_anchor(params)
    size = jax.tree.map(np.zeros_like, theta0_np)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    for t in range(4):
        seeds = es.iteration_seeds(base_seed=1, iteration=t, population_size=k)
        rewards = es.evaluate_population(
            jnp_fitness, params, seeds, sigma=sigma, antithetic=antithetic
        )
        # The library's rewards: a float32 sum over every parameter of terms a few roundings
        # deep (perturbation, square, sine), against numpy's in float64 (numerics).
        scale = fitness_scale(params, seeds, sigma=sigma, antithetic=antithetic)
        theta_np, own, step_size = np_algorithm1(
            theta_np,
            theta0_np,
            np.asarray(seeds),
            rewards,
            sigma=sigma,
            alpha=alpha,
            antithetic=antithetic,
            kind=kind,
            lam=lam,
            like=params,
        )
        assert_sum_close(np.reshape(rewards, own.shape), own, scale=scale, dtype=np.float32,
                         terms=num_params + 6)  # fmt: skip
        size = jax.tree.map(np.add, size, step_size)
        coeffs = es.normalize_rewards(rewards, antithetic=antithetic)
        n = 2 * k if antithetic else k
        if fused:
            params, _ = es.es_step(
                params, anchor, seeds, coeffs, alpha=alpha, population_size=n, lam=lam, kind=kind
            )
        else:
            params = es.es_update(params, seeds, coeffs, alpha=alpha, population_size=n)
            params = es.anchored_decay(params, anchor.to_device(), alpha=alpha, lam=lam, kind=kind)
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(*map(jax.tree.leaves, (theta_np, theta0_np)), strict=True)
    )
    assert moved > 1e-3  # the run really changed the parameters
    for got, want, like, sz in zip(
        jax.tree.leaves(to_np(params)),
        jax.tree.leaves(theta_np),
        jax.tree.leaves(params),
        jax.tree.leaves(size),
        strict=True,
    ):
        if like.dtype == jnp.bfloat16:
            # one rounding step of bfloat16 where float32/float64 arithmetic straddles one of
            # its boundaries, plus the float32 error below
            np.testing.assert_array_less(np.abs(got - want), 2**-7 * np.abs(want) + 1e-6)
        else:
            # Same rewards, so the float32 update differs from numpy's only by its rounding:
            # per iteration a z-score's cast, the n-term sum and the add, the decay: n + 6
            # roundings of that iteration's |theta| + |theta_0| + alpha/n sum |c eps|.
            assert_sum_close(got, want, scale=sz, dtype=np.float32, terms=2 * k + 6)


# --- noise --------------------------------------------------------------------------------


def big_tree():
    return {
        "a": jnp.zeros((300, 200)),
        "b": jnp.zeros((300, 200)),
        "layers": {"w": jnp.zeros((4, 300, 200))},
    }


def corr(x, y):
    return float(np.corrcoef(np.ravel(x), np.ravel(y))[0, 1])


def test_noise_is_deterministic_and_standard_normal():
    tree = big_tree()
    e1, e2 = es.sample_noise(tree, 7), es.sample_noise(tree, 7)
    for x, y in zip(jax.tree.leaves(e1), jax.tree.leaves(e2), strict=True):
        assert x.dtype == jnp.float32
        np.testing.assert_array_equal(x, y)  # the same program on the same seed
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(e1)])
    n = flat.size  # 360k samples: mean within 5 standard errors, std within 1%
    assert abs(flat.mean()) < 5 / np.sqrt(n)
    assert abs(flat.std() - 1) < 0.01
    assert abs(np.mean(flat**3)) < 0.05  # symmetric
    assert abs(np.mean(flat**4) - 3) < 0.1  # Gaussian tails


def test_noise_is_uncorrelated_across_seeds_leaves_and_layers():
    tree = big_tree()
    e1, e2 = es.sample_noise(tree, 1), es.sample_noise(tree, 2)
    bound = 5 / np.sqrt(300 * 200)
    assert abs(corr(e1["a"], e2["a"])) < bound  # seeds
    assert abs(corr(e1["a"], e1["b"])) < bound  # leaves of the same shape
    w = e1["layers"]["w"]
    assert abs(corr(w[0], w[1])) < bound  # layers
    assert abs(corr(w[2], e1["a"])) < bound


def test_layer_slice_regenerated_alone_equals_full_draw():
    # Bitwise by contract, though the programs differ: the update regenerates each layer's
    # slice alone and replay promises bitwise results. The draw is integer bit operations
    # (threefry) and an elementwise transform, with no reduction to reorder.
    tree = big_tree()
    full = es.sample_noise(tree, 11)["layers"]["w"]
    path = (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("w"))
    devices = jax.devices()
    for i in reversed(range(4)):  # any order, any device
        with jax.default_device(devices[i % len(devices)]):
            alone = es.slice_noise(11, path, (4, 300, 200), layer=i)
        np.testing.assert_array_equal(np.asarray(alone), np.asarray(full[i]))
    # A leaf regenerated alone, in a tree without its siblings, equals the full draw too.
    only = es.sample_noise({"layers": {"w": tree["layers"]["w"]}}, 11)["layers"]["w"]
    np.testing.assert_array_equal(only, full)
    with pytest.raises(ValueError, match="layer=4"):
        es.slice_noise(11, path, (4, 300, 200), layer=4)


def test_shape_noise_sharing_reproduces_reference_correlation():
    tree = big_tree()
    e = es.sample_noise(tree, 3, noise_sharing="shape")
    np.testing.assert_array_equal(e["a"], e["b"])  # same shape, same noise
    np.testing.assert_array_equal(e["layers"]["w"][0], e["layers"]["w"][3])
    np.testing.assert_array_equal(e["layers"]["w"][1], e["a"])
    assert abs(corr(e["a"], es.sample_noise(tree, 4, noise_sharing="shape")["a"])) < 0.03
    with pytest.raises(ValueError, match="noise_sharing='tensor'"):
        es.sample_noise(tree, 3, noise_sharing="tensor")


def test_perturb_casts_back_and_matches_noise():
    params = make_params()
    out = es.perturb(params, 5, sigma=0.1, sign=-1.0)
    eps = es.sample_noise(params, 5)
    for p, q, e in zip(*map(jax.tree.leaves, (params, out, eps)), strict=True):
        assert q.dtype == p.dtype
        want = (p.astype(jnp.float32) - 0.1 * e).astype(p.dtype)
        # p - 0.1 e, fused (one rounding) or not (two), then the cast: the error scales with
        # |p| + 0.1 |e| where the two nearly cancel; bfloat16 leaves are one of its rounding
        # steps (2 u) apart where float32 arithmetic straddles a bfloat16 boundary (numerics).
        scale = np.abs(np.asarray(p, np.float32)) + 0.1 * np.abs(np.asarray(e))
        dtype = ml_dtypes.bfloat16 if p.dtype == jnp.bfloat16 else np.float32
        assert_sum_close(np.asarray(q, np.float32), np.asarray(want, np.float32), scale=scale,
                         dtype=dtype, terms=3 if dtype == np.float32 else 1)  # fmt: skip
        assert float(jnp.max(jnp.abs(q.astype(jnp.float32) - p.astype(jnp.float32)))) > 0.01


def test_iteration_seeds_are_a_pure_function_of_seed_and_iteration():
    a = es.iteration_seeds(base_seed=0, iteration=3, population_size=30)
    np.testing.assert_array_equal(
        a, es.iteration_seeds(base_seed=0, iteration=3, population_size=30)
    )
    b = es.iteration_seeds(base_seed=0, iteration=4, population_size=30)
    c = es.iteration_seeds(base_seed=1, iteration=3, population_size=30)
    assert len(set(np.asarray(a).tolist())) == 30
    assert not set(np.asarray(a).tolist()) & set(np.asarray(b).tolist())
    assert not set(np.asarray(a).tolist()) & set(np.asarray(c).tolist())
    assert int(np.max(a)) < 2**31


# --- rewards ------------------------------------------------------------------------------


def test_normalize_rewards_golden_values():
    # numpy in float64 on the host, then one rounding to float32 (2^-24 < 1e-6 relative).
    z = es.normalize_rewards(np.array([1.0, 2.0, 3.0, 4.0]))
    std = np.std([1, 2, 3, 4])
    np.testing.assert_allclose(z, (np.array([1, 2, 3, 4]) - 2.5) / (std + 1e-8), rtol=1e-6)
    anti = np.array([[1.0, 5.0], [3.0, 3.0]])
    za = (anti - anti.mean()) / (anti.std() + 1e-8)
    np.testing.assert_allclose(
        es.normalize_rewards(anti, antithetic=True), za[0] - za[1], rtol=1e-6
    )
    flat = es.normalize_rewards(np.full(8, 0.7))
    assert np.all(np.asarray(flat) == 0) and np.all(np.isfinite(flat))
    assert np.all(np.asarray(es.normalize_rewards(np.ones((2, 4)), antithetic=True)) == 0)
    tiny = es.normalize_rewards(np.array([0.7, 0.7, 0.7 + 1e-12]))  # below the 1e-8 floor
    assert np.all(np.abs(tiny) < 1e-3)


def test_normalize_rewards_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[2, K\]"):
        es.normalize_rewards(np.ones(6), antithetic=True)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        es.normalize_rewards(np.ones((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        es.normalize_rewards(np.array([1.0, np.nan]))


# --- anchored decay -----------------------------------------------------------------------


def test_anchored_decay_golden_values():
    anchor = {"w": jnp.array([0.0, 1.0, 1.0, -2.0])}
    params = {"w": jnp.array([0.5, 1.0, 0.9, -1.0])}
    # a + (1 - alpha lam)(theta - a), or the soft threshold, in float32: four roundings of
    # values of size |a| + |theta| (numerics).
    scale = np.abs(anchor["w"]) + np.abs(params["w"])
    l2 = es.anchored_decay(params, anchor, alpha=0.1, lam=2.0, kind="l2")  # shrink by 0.8
    assert_sum_close(l2["w"], [0.4, 1.0, 0.92, -1.2], scale=scale, dtype=np.float32, terms=4)
    l1 = es.anchored_decay(params, anchor, alpha=0.1, lam=2.0, kind="l1")  # threshold 0.2
    assert_sum_close(l1["w"], [0.3, 1.0, 1.0, -1.2], scale=scale, dtype=np.float32, terms=4)
    assert es.anchored_decay(params, anchor, alpha=0.1, lam=0.0, kind="l2") is params


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lam": -1.0, "kind": "l2"}, "lam=-1.0"),
        ({"lam": 1.0, "kind": "l3"}, "kind='l3'"),
        ({"lam": 20.0, "kind": "l2"}, r"alpha\*lam < 1.*lam=20.0"),
    ],
)
def test_anchored_decay_rejects_bad_settings(kwargs, match):
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=match):
        es.anchored_decay(p, p, alpha=0.05, **kwargs)


def test_l1_with_large_threshold_is_allowed():
    p, a = {"w": jnp.array([3.0])}, {"w": jnp.array([0.0])}
    out = es.anchored_decay(p, a, alpha=0.5, lam=4.0, kind="l1")  # alpha*lam = 2 >= 1 is fine
    np.testing.assert_allclose(out["w"], [1.0])


# --- host anchor and the fused step ---------------------------------------------------------


def test_anchor_lives_in_pinned_host_memory_and_round_trips():
    params = make_params()
    anchor = es.host_anchor(params)
    kinds = {a.sharding.memory_kind for a in anchor.arrays()}
    assert kinds == {"pinned_host"}
    # Stacked leaves are split into one host array per layer.
    assert len(anchor.arrays()) == len(jax.tree.leaves(params)) - 2 + 2 * 3
    back = anchor.to_device()
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        assert x.sharding.memory_kind == "device"
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind,lam", [("l2", 10.0), ("l1", 0.01), ("none", 0.0)])
def test_es_step_equals_update_then_device_anchored_decay(kind, lam):
    params = jax.tree.map(lambda x: x.astype(jnp.float32), make_params(1))
    theta0 = make_params(2)
    theta0 = jax.tree.map(lambda x: x.astype(jnp.float32), theta0)
    anchor = es.host_anchor(theta0)
    seeds = es.iteration_seeds(base_seed=3, iteration=0, population_size=9)
    coeffs = jnp.linspace(-1.5, 1.5, 9)
    want = es.es_update(params, seeds, coeffs, alpha=0.01, population_size=9)
    want = es.anchored_decay(want, theta0, alpha=0.01, lam=lam, kind=kind)
    copy = jax.tree.map(jnp.copy, params)
    got, _ = es.es_step(
        copy, anchor, seeds, coeffs, alpha=0.01, population_size=9, lam=lam, kind=kind
    )
    assert all(x.is_deleted() for x in jax.tree.leaves(copy))  # parameters were donated
    # One fused program against two: the same sum of 9 noise terms, then the decay, possibly
    # rounded in another order: 9 + 5 roundings of update_scale (numerics).
    scale = update_scale(params, seeds, coeffs, alpha=0.01, population_size=9, anchor=theta0)
    for g, w, p, sc in zip(*map(jax.tree.leaves, (got, want, params, scale)), strict=True):
        assert_sum_close(g, w, scale=sc, dtype=np.float32, terms=9 + 5)
        assert float(jnp.max(jnp.abs(g - p))) > 1e-4


def test_es_step_rejects_mismatched_anchor():
    params = make_params()
    anchor = es.host_anchor({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="structure does not match"):
        es.es_step(
            params,
            anchor,
            np.arange(2),
            np.ones(2),
            alpha=0.1,
            population_size=2,
            lam=1.0,
            kind="l2",
        )


def test_update_arguments_are_checked():
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="seeds and coeffs"):
        es.es_update(p, np.arange(3), np.ones(2), alpha=0.1, population_size=3)
    with pytest.raises(ValueError, match="alpha=-0.1"):
        es.es_update(p, np.arange(2), np.ones(2), alpha=-0.1, population_size=2)


# --- memory -------------------------------------------------------------------------------


def test_chunked_leaf_update_equals_sum_of_noise():
    # 4099 x 1031 > CHUNK_ELEMENTS: drawn in two row chunks, the last one partial.
    assert 4099 * 1031 > es.CHUNK_ELEMENTS
    params = {"embed": jnp.zeros((4099, 1031)), "layers": {"w": jnp.zeros((2, 3, 5))}}
    seeds, coeffs = np.array([4, 9, 17]), np.array([0.5, -1.0, 2.0], np.float32)
    got = es.es_update(params, seeds, coeffs, alpha=0.3, population_size=3)
    noise = [es.sample_noise(params, s) for s in seeds]
    for name in ("embed",):
        want = sum(c * np.asarray(e[name], np.float64) for c, e in zip(coeffs, noise, strict=True))
        # float32 against float64: 3 products summed and scaled, 3 + 3 roundings (numerics).
        scale = sum(
            abs(c) * np.abs(np.asarray(e[name])) for c, e in zip(coeffs, noise, strict=True)
        )
        assert_sum_close(got[name], 0.1 * want, scale=0.1 * scale, dtype=np.float32, terms=6)
    e = np.asarray(noise[0]["embed"])
    chunk = es.CHUNK_ELEMENTS // 1031
    assert abs(e.mean()) < 5 / np.sqrt(e.size) and abs(e.std() - 1) < 0.01
    # Rows of different chunks are independent draws, not copies of each other.
    assert abs(corr(e[:31], e[chunk:])) < 5 / np.sqrt(31 * 1031)


def test_es_update_memory_does_not_grow_with_population():
    # 4 MiB per leaf; 32 materialised noise trees would need 128 MiB per leaf.
    params = {"embed": jnp.ones((4096, 256)), "layers": {"w": jnp.ones((4, 512, 512))}}
    leaf_bytes = 4096 * 256 * 4

    def temp_bytes(n):
        lowered = es_update_mod._es_update.lower(
            params,
            jnp.arange(n, dtype=jnp.uint32),
            jnp.ones(n),
            jnp.float32(0.1),
            population_size=n,
            noise_sharing="none",
        )
        return lowered.compile().memory_analysis().temp_size_in_bytes

    t2, t32 = temp_bytes(2), temp_bytes(32)
    assert t32 <= 1.05 * t2  # no N-sized buffer
    assert t32 < 8 * leaf_bytes  # a few slice-sized buffers (noise, bits, accumulator)


def test_large_leaf_update_memory_is_bounded_by_chunks():
    # A 64 MiB leaf: without chunked noise the generator's temporaries alone are ~7x that.
    params = {"embed": jnp.ones((16384, 1024))}
    leaf_bytes = 16384 * 1024 * 4
    lowered = es_update_mod._es_update.lower(
        params,
        jnp.arange(8, dtype=jnp.uint32),
        jnp.ones(8),
        jnp.float32(0.1),
        population_size=8,
        noise_sharing="none",
    )
    assert lowered.compile().memory_analysis().temp_size_in_bytes < 3 * leaf_bytes


# --- sharded population evaluation -----------------------------------------------------------


def quadratic_fitness(params, key):
    noise = jax.random.normal(key, ())  # exercises the per-member fitness key
    return -jnp.sum((params["embed"] - 0.1) ** 2) + 1e-3 * noise


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("n", [4, 7, 8])  # 4: one member per device, no loop around it
def test_sharded_population_equals_single_device(n, antithetic, four_devices):
    params = make_params()
    seeds = es.iteration_seeds(base_seed=5, iteration=0, population_size=n)
    one = es.population_mesh(jax.devices()[:1])
    four = es.population_mesh(jax.devices()[:4])
    kw = dict(sigma=0.1, antithetic=antithetic)
    r1 = es.evaluate_population(quadratic_fitness, params, seeds, mesh=one, **kw)
    r4 = es.evaluate_population(quadratic_fitness, params, seeds, mesh=four, **kw)
    r4b = es.evaluate_population(
        quadratic_fitness, params, seeds, mesh=four, members_per_batch=2, **kw
    )
    assert r1.shape == ((2, n) if antithetic else (n,))
    # One device, four, and four with two members vmapped per call are different programs:
    # each reward is a sum of 77 squares (all positive, so relative to the reward) after the
    # perturbation and subtraction, plus the 1e-3 noise term: 77 + 4 roundings (numerics).
    # sum of squares + |1e-3 noise| <= |reward| + 2 |1e-3 noise|, |noise| < 6 std deviations
    scale = np.abs(np.asarray(r1)) + 2 * 1e-3 * 6
    assert_sum_close(r4, r1, scale=scale, dtype=np.float32, terms=77 + 4)
    assert_sum_close(r4b, r1, scale=scale, dtype=np.float32, terms=77 + 4)
    # And both equal evaluating each member directly.
    signs = [1.0, -1.0] if antithetic else [1.0]
    direct = np.array(
        [
            [
                quadratic_fitness(es.perturb(params, s, sigma=0.1, sign=g), es.fitness_key(s))
                for s in np.asarray(seeds)
            ]
            for g in signs
        ]
    )
    assert_sum_close(np.reshape(r1, direct.shape), direct, scale=np.reshape(scale, direct.shape),
                     dtype=np.float32, terms=77 + 4)  # fmt: skip
    assert np.std(direct) > 0


def test_es_step_on_parameters_replicated_over_four_devices(four_devices):
    mesh = es.population_mesh(jax.devices()[:4])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = jax.tree.map(lambda x: x.astype(jnp.float32), make_params(1))
    theta0 = jax.tree.map(lambda x: x + 0.5, params)
    seeds, coeffs = np.arange(5), np.linspace(-1, 1, 5)
    kw = dict(alpha=0.01, population_size=5, lam=10.0, kind="l2")
    want, want_metrics = es.es_step(jax.tree.map(jnp.copy, params), es.host_anchor(theta0),
                                    seeds, coeffs, with_drift=True, **kw)  # fmt: skip
    want_drift = want_metrics["drift_norm"]
    rep = jax.device_put(params, replicated)
    anchor = es.host_anchor(jax.device_put(theta0, replicated))
    assert {a.sharding.memory_kind for a in anchor.arrays()} == {"pinned_host"}
    # CPU devices of one process share its cores: the step runs once and is copied to all four
    got, metrics = es.es_step(rep, anchor, seeds, coeffs, with_drift=True, **kw)
    drift = metrics["drift_norm"]
    # ... so it is the unreplicated program on the same inputs: bitwise
    assert drift == want_drift
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.sharding.is_equivalent_to(replicated, g.ndim)
        for shard in g.addressable_shards:
            np.testing.assert_array_equal(shard.data, w)


def test_population_fitness_may_return_a_pytree():
    def tokens_and_score(params, key):  # what the LLM trainer returns: tokens for the host
        del key
        w = params["embed"]
        return {"argmax": jnp.argmax(w, axis=1).astype(jnp.int32), "score": jnp.sum(w)}

    params = make_params()
    seeds = np.arange(3)
    out = es.evaluate_population(tokens_and_score, params, seeds, sigma=0.5, antithetic=True)
    assert out["argmax"].shape == (2, 3, 11) and out["argmax"].dtype == jnp.int32
    assert out["score"].shape == (2, 3)
    minus = es.perturb(params, 2, sigma=0.5, sign=-1.0)
    # argmax of 7 normal draws inside and outside vmap: equal unless two are within a
    # rounding of each other (chance ~1e-6 a row, and the seeds are fixed)
    np.testing.assert_array_equal(out["argmax"][1, 2], jnp.argmax(minus["embed"], axis=1))


@pytest.mark.parametrize("kind,lam", [("l2", 10.0), ("none", 0.0)])
def test_es_step_reports_the_drift_norm(kind, lam):
    params = jax.tree.map(lambda x: x.astype(jnp.float32), make_params(1))
    theta0 = jax.tree.map(lambda x: x - 0.01, params)
    kw = dict(alpha=0.01, population_size=5, lam=lam, kind=kind)
    new, metrics = es.es_step(
        jax.tree.map(jnp.copy, params), es.host_anchor(theta0), np.arange(5),
        np.linspace(-1, 1, 5), with_drift=True, **kw,
    )  # fmt: skip
    drift = metrics["drift_norm"]
    want = np.sqrt(sum(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
                       for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(theta0),
                                       strict=True)))  # fmt: skip
    # float32 inside the step against float64 here: a sum of 210 squares of differences
    # (all positive: relative to the result), then a square root (numerics).
    n = sum(x.size for x in jax.tree.leaves(params))
    assert_sum_close(drift, want, scale=want, dtype=np.float32, terms=n + 3)
    assert drift > 0.01 * np.sqrt(sum(x.size for x in jax.tree.leaves(params))) * 0.5


@pytest.mark.parametrize("with_drift", [False, True])
def test_es_step_returns_params_and_metrics_in_one_shape(with_drift):
    params = jax.tree.map(lambda x: x.astype(jnp.float32), make_params(1))
    want = es.es_update(params, np.arange(4), np.linspace(-1, 1, 4), alpha=0.01, population_size=4)
    out = es.es_step(
        jax.tree.map(jnp.copy, params), es.host_anchor(params), np.arange(4),
        np.linspace(-1, 1, 4), alpha=0.01, population_size=4, with_drift=with_drift,
    )  # fmt: skip
    assert isinstance(out, tuple) and len(out) == 2
    new, metrics = out
    assert set(metrics) == ({"drift_norm"} if with_drift else set())
    # The fused step (with or without the drift) against es_update alone: two programs, the
    # same 4-term sum (numerics).
    scale = update_scale(params, np.arange(4), np.linspace(-1, 1, 4), alpha=0.01,
                         population_size=4, anchor=params)  # fmt: skip
    for g, w, sc in zip(*map(jax.tree.leaves, (new, want, scale)), strict=True):
        assert_sum_close(g, w, scale=sc, dtype=np.float32, terms=4 + 5)
