"""The ES update and anchored weight decay (Schweighofer et al. 2026, Algorithm 1, steps 4-8).

    z = (R - mean R) / (std R + 1e-8)                            (normalize_rewards)
    theta_t = theta_{t-1} + alpha / N * sum_n z_n eps(s_n)       (es_update)
    theta_t = theta_t - alpha * lam * l'(theta_t - theta_0)      (anchored_decay, step 8)

`es_step` fuses the last two lines with theta_0 held in host memory (`esawd.es.anchor`),
one parameter slice at a time, and returns `(params, metrics)`. The noise is regenerated
from the seeds by `esawd.es.noise`, one chunk at a time, never stored.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import SingleDeviceSharding

from esawd.es.anchor import (
    HostAnchor,
    _cpu_replicas,
    _memory_sharding,
    _slice_sharding,
    _to_device,
    host_value,
)
from esawd.es.noise import (
    _add_scaled,
    _check_noise_sharing,
    _check_rank,
    _chunk_noise,
    _factors,
    _leaf_specs,
    _LeafSpec,
    _lowrank_product,
    _unchunk,
)
from esawd.types import Params, Seeds

AWD_KINDS = ("none", "l1", "l2")


# ---------------------------------------------------------------------------------------
# Rewards -> coefficients.
# ---------------------------------------------------------------------------------------


def normalize_rewards(rewards: jax.Array | np.ndarray, *, antithetic: bool = False) -> np.ndarray:
    """Z-score rewards over the population (population std); antithetic: `z[0] - z[1]`.

    Computed on the host in float64 (rewards are host-side scores); returns float32.
    """
    r = np.asarray(rewards, np.float64)
    if antithetic:
        if r.ndim != 2 or r.shape[0] != 2:
            raise ValueError(
                f"antithetic rewards must have shape [2, K] (row 0: +eps_k, row 1: -eps_k), "
                f"got {r.shape}."
            )
    elif r.ndim != 1:
        raise ValueError(
            f"rewards must have shape [N], got {r.shape}; antithetic=True wants [2, K]."
        )
    if r.size < 2:
        raise ValueError(f"need at least 2 rewards to z-score, got {r.size}.")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"rewards must be finite, got {r.ravel()[~np.isfinite(r.ravel())][:4]}.")
    if np.all(r == r.flat[0]):
        z = np.zeros_like(r)  # no signal; rounding in the mean must not invent one
    else:
        z = (r - r.mean()) / (r.std() + 1e-8)
    return (z[0] - z[1] if antithetic else z).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Per-slice kernels and argument checks.
# ---------------------------------------------------------------------------------------


def _slice_delta(seeds: jax.Array, coeffs: jax.Array, spec: _LeafSpec, layer) -> jax.Array:
    """sum_k coeffs_k * eps_k for one slice; one noise chunk live at a time.

    Low rank: one matmul `[m, K r] x [K r, n]` of every member's factors, the A's scaled by
    their coefficients; the result has rank up to K r."""
    if spec.lowrank:
        a, b = jax.vmap(lambda s: _factors(s, spec, layer))(seeds)  # [K, m, r], [K, n, r]
        a = a * coeffs[:, None, None]
        m, n = spec.slice_shape
        a = a.transpose(1, 0, 2).reshape(m, -1)  # [m, K r]
        b = b.transpose(1, 0, 2).reshape(n, -1)  # [n, K r]
        return _lowrank_product(a, b, spec.rank)

    def chunk_delta(c):
        def body(k, acc):
            return acc + coeffs[k] * _chunk_noise(seeds[k], spec, layer, c)

        shape = (
            spec.slice_shape if spec.num_chunks == 1 else (spec.chunk_rows, *spec.slice_shape[1:])
        )
        return lax.fori_loop(0, seeds.shape[0], body, jnp.zeros(shape, jnp.float32))

    if spec.num_chunks == 1:
        return chunk_delta(0)
    return _unchunk(lax.map(chunk_delta, jnp.arange(spec.num_chunks)), spec)


def _decayed(x: jax.Array, anchor: jax.Array, alpha_lam: jax.Array, kind: str) -> jax.Array:
    """Step 8 for one slice: the proximal step of alpha * lam * l(theta - theta_0)."""
    a = anchor.astype(jnp.float32)
    d = x.astype(jnp.float32) - a
    if kind == "l2":
        d = (1.0 - alpha_lam) * d
    else:  # l1: soft-threshold
        d = jnp.sign(d) * jnp.maximum(jnp.abs(d) - alpha_lam, 0.0)
    return (a + d).astype(x.dtype)


def _check_update_args(seeds, coeffs, alpha: float, population_size: int):
    """Validate, and return seeds/coeffs as host arrays so the params decide placement."""
    seeds, coeffs = np.asarray(seeds, np.uint32), np.asarray(coeffs, np.float32)
    if np.shape(seeds) != np.shape(coeffs) or np.ndim(seeds) != 1:
        raise ValueError(
            f"seeds and coeffs must both have shape [K]; got {np.shape(seeds)} and "
            f"{np.shape(coeffs)}."
        )
    if population_size < 1:
        raise ValueError(f"population_size={population_size} must be >= 1 (2K if antithetic).")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha} must be a positive finite learning rate (paper: 5e-4).")
    return seeds, coeffs


def check_awd(*, alpha: float, lam: float, kind: str) -> None:
    """Raise ValueError, naming the value and the valid range, for bad AWD settings."""
    if kind not in AWD_KINDS:
        raise ValueError(f"AWD kind={kind!r} is unknown; valid kinds are {AWD_KINDS}.")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"AWD lam={lam} must be finite and >= 0 (paper: l2 10, l1 0.01).")
    if kind == "l2" and alpha * lam >= 1:
        raise ValueError(
            f"L2 AWD needs alpha*lam < 1 so that (1 - alpha*lam) shrinks the drift; got "
            f"alpha={alpha} * lam={lam} = {alpha * lam}. Choose lam < {1 / alpha:g}."
        )


# ---------------------------------------------------------------------------------------
# The unfused ES update and anchored weight decay (device-resident anchor).
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("population_size", "noise_sharing", "rank"))
def _es_update(params, seeds, coeffs, alpha, *, population_size, noise_sharing, rank=0):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing, rank)
    seeds = seeds.astype(jnp.uint32)
    coeffs = coeffs.astype(jnp.float32)
    scale = alpha / population_size
    out = []
    for x, s in zip(leaves, specs, strict=True):
        if not s.stacked:
            out.append(_add_scaled(x, _slice_delta(seeds, coeffs, s, 0), scale))
            continue

        # Layer by layer: the live extra memory is one noise slice plus the accumulator.
        def layer_body(i, y, s=s):
            new = _add_scaled(y[i], _slice_delta(seeds, coeffs, s, i), scale)
            return lax.dynamic_update_index_in_dim(y, new, i, 0)

        out.append(lax.fori_loop(0, x.shape[0], layer_body, x))
    return jax.tree_util.tree_unflatten(treedef, out)


def es_update(
    params: Params,
    seeds: Seeds,
    coeffs: jax.Array,
    *,
    alpha: float,
    population_size: int,
    noise_sharing: str = "none",
    rank: int = 0,
) -> Params:
    """`theta + alpha / population_size * sum_k coeffs_k * eps(seed_k)`, slice by slice.

    rank >= 1: eps is the low-rank noise of `sample_noise(rank=rank)`; each 2-D slice's
    update is then one matmul of the members' factors."""
    seeds, coeffs = _check_update_args(seeds, coeffs, alpha, population_size)
    _check_noise_sharing(noise_sharing)
    _check_rank(rank)
    return _es_update(
        params,
        seeds,
        coeffs,
        jnp.float32(alpha),
        population_size=population_size,
        noise_sharing=noise_sharing,
        rank=int(rank),
    )


@functools.partial(jax.jit, static_argnames=("kind",))
def _anchored_decay(params, anchor, alpha_lam, *, kind):
    return jax.tree_util.tree_map(lambda x, a: _decayed(x, a, alpha_lam, kind), params, anchor)


def anchored_decay(
    params: Params, anchor: Params, *, alpha: float, lam: float, kind: str
) -> Params:
    """Pull `params` towards `anchor`: l2 shrinks theta - theta_0, l1 soft-thresholds it."""
    check_awd(alpha=alpha, lam=lam, kind=kind)
    if lam == 0 or kind == "none":
        return params
    if isinstance(anchor, HostAnchor):
        anchor = anchor.to_device()
    return _anchored_decay(params, anchor, jnp.float32(alpha * lam), kind=kind)


# ---------------------------------------------------------------------------------------
# The fused step: ES update + AWD, theta_0 streamed from host memory slice by slice.
# ---------------------------------------------------------------------------------------


def _fused(x, delta, scale, anchor, alpha_lam, kind: str, drift: bool):
    """One slice's update then decay, and its squared drift (0 unless `drift`)."""
    # Cast between the two steps so the fused result equals es_update then anchored_decay.
    y = _add_scaled(x, delta, scale)
    if kind != "none":
        y = _decayed(y, anchor, alpha_lam, kind)
    if not drift:
        return y, jnp.float32(0)
    d = y.astype(jnp.float32) - anchor.astype(jnp.float32)
    return y, jnp.sum(d * d)


# The leaf's noise stream is an argument, not part of the static spec: one compile per slice
# shape instead of one per leaf (a decoder's q/o, k/v, gate/up and norm leaves share shapes).
@functools.partial(jax.jit, static_argnames=("spec", "kind", "drift"), donate_argnums=0)
def _leaf_step(x, anchor, seeds, coeffs, scale, alpha_lam, stream, *, spec, kind, drift):
    spec = dataclasses.replace(spec, stream=stream)
    delta = _slice_delta(seeds, coeffs, spec, 0)
    return _fused(x, delta, scale, anchor, alpha_lam, kind, drift)


@functools.partial(jax.jit, static_argnames=("spec", "kind", "drift"), donate_argnums=0)
def _layer_step(x, layer, anchor, seeds, coeffs, scale, alpha_lam, stream, *, spec, kind, drift):
    # x: [L, ...] donated, so the slice is written in place.
    spec = dataclasses.replace(spec, stream=stream)
    x_i = x[layer]
    delta = _slice_delta(seeds, coeffs, spec, layer)
    y, sq = _fused(x_i, delta, scale, anchor, alpha_lam, kind, drift)
    return lax.dynamic_update_index_in_dim(x, y, layer, 0), sq


def _check_anchor(anchor, treedef) -> None:
    if not isinstance(anchor, HostAnchor):
        raise TypeError(
            f"es_step with AWD or with_drift needs a HostAnchor (see host_anchor), got "
            f"{type(anchor)}."
        )
    if anchor.treedef != treedef:
        raise ValueError(
            f"the anchor's structure does not match params:\n  anchor {anchor.treedef}\n  "
            f"params {treedef}\nBuild it with host_anchor(initial_params)."
        )


def _fused_leaves(leaves, anchors, specs, seeds, coeffs, scale, alpha_lam, **kw):
    """Every slice through the fused kernel: the new leaves, and each slice's squared drift."""
    out, squares = [], []
    for x, spec, a in zip(leaves, specs, anchors, strict=True):
        stream, s = np.uint32(spec.stream), dataclasses.replace(spec, stream=0)
        if not s.stacked:
            a_dev = None if a is None else _to_device(a, _memory_sharding(x, "device"))
            y, sq = _leaf_step(x, a_dev, seeds, coeffs, scale, alpha_lam, stream, spec=s, **kw)
            out.append(y)
            squares.append(sq)
            continue
        target = _slice_sharding(x.sharding) if a is not None else None
        for i in range(x.shape[0]):
            # The copy of layer i+1 is dispatched while layer i computes (async dispatch).
            a_dev = None if a is None else _to_device(a[i], target)
            x, sq = _layer_step(x, i, a_dev, seeds, coeffs, scale, alpha_lam, stream, spec=s, **kw)
            squares.append(sq)
        out.append(x)
    return out, squares


def _norm(squares: list[jax.Array]) -> float:
    """sqrt of the sum of per-slice float32 squares, added in float64 on the host."""
    if all(sq.is_fully_addressable for sq in squares):
        values = np.asarray(jax.device_get(squares), np.float64)  # one transfer
    else:
        values = np.array([host_value(sq) for sq in squares], np.float64)
    return math.sqrt(float(values.sum()))


def es_step(
    params: Params,
    anchor: HostAnchor | None,
    seeds: Seeds,
    coeffs: jax.Array,
    *,
    alpha: float,
    population_size: int,
    lam: float = 0.0,
    kind: str = "none",
    noise_sharing: str = "none",
    rank: int = 0,
    with_drift: bool = False,
) -> tuple[Params, dict[str, float]]:
    """The fused ES update + AWD, streaming theta_0 from host memory slice by slice.

    `params` is donated: its buffers are reused for the result, so the caller must not use
    the input afterwards. Returns `(params, metrics)`; `params` equals
    `anchored_decay(es_update(...), anchor)` to float32 rounding. `metrics` is
    `{"drift_norm": ||theta_t - theta_0||}` with `with_drift=True`, computed from the anchor
    slices already on the device (per-slice float32 sums, added in float64), else `{}`.
    `rank` >= 1 uses the low-rank noise of `sample_noise(rank=rank)`.
    """
    seeds, coeffs = _check_update_args(seeds, coeffs, alpha, population_size)
    check_awd(alpha=alpha, lam=lam, kind=kind)
    _check_rank(rank)
    shared = _cpu_replicas(params)
    if shared is not None:
        # One CPU split into devices: replicas would share its cores and only repeat the same
        # work, so the step runs once, on the first device, and is copied to the others.
        first = SingleDeviceSharding(min(shared.device_set, key=lambda d: d.id))
        one = jax.device_put(params, first)
        del params  # donated, as below
        new, metrics = es_step(
            one, anchor, seeds, coeffs, alpha=alpha, population_size=population_size, lam=lam,
            kind=kind, noise_sharing=noise_sharing, rank=rank, with_drift=with_drift,
        )  # fmt: skip
        return jax.device_put(new, shared), metrics
    if lam == 0:
        kind = "none"
    needs_anchor = kind != "none" or with_drift
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if needs_anchor:
        _check_anchor(anchor, treedef)
    out, squares = _fused_leaves(
        leaves,
        anchor.leaves if needs_anchor else [None] * len(leaves),
        _leaf_specs(params, noise_sharing, int(rank)),
        seeds,
        coeffs,
        jnp.float32(alpha / population_size),
        jnp.float32(alpha * lam),
        kind=kind,
        drift=with_drift,
    )
    new = jax.tree_util.tree_unflatten(treedef, out)
    return new, ({"drift_norm": _norm(squares)} if with_drift else {})
