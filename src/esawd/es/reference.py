"""The reference's float16 in-place dynamics: a reproduction switch (`es.precision`).

The reference implementation (`kschweig/es-awd`: `weight_update_utils.py`,
`distributed_utils.py`, `es.py`; run with `--precision float16`) keeps each vLLM engine's
weights in float16 and changes them in place, one float16 rounding per torch op, with noise
`n = fp16(eps)`:

    perturb   p <- fp16(p + sigma n)                      (perturb_self_weights)
    restore   p <- fp16(p - sigma n)                      (restore_self_weights: not exact)
    update    acc <- fp16(acc + z_k n_k), k = 1..K;  p <- fp16(p + alpha / N acc)
    AWD       d <- fp16(p - p0);  l2: d <- fp16((1 - alpha lam) d)
                                  l1: d <- sign(d) max(fp16(|d| - alpha lam), 0)
              p <- fp16(p0 + d)                           (apply_reference_weight_decay_)

With E engines (`--num_engines`, 8 in `run.sh`), engine 0 evaluates seeds 0, E, 2E, ... by
perturb -> generate -> restore (the mirrored pass repeats them negated), then applies the
update and broadcasts its weights: the residues of engine 0's round trips persist, the other
engines' are overwritten. `reference_step` reproduces exactly that sequence on float16
masters. What it leaves out: the members' forward passes do not see the residues the other
engines carry within an iteration, and the members are perturbed as fp16(p + sigma eps)
(eps in float32, one rounding) rather than fp16(p + sigma fp16(eps)).

Our default (`es.precision="float32"`) keeps float32 masters and rounds once per step, so
none of this happens; docs/algorithm.md measures what the switch changes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import SingleDeviceSharding

from esawd.es.anchor import HostAnchor, _cpu_replicas
from esawd.es.noise import _check_noise_sharing, _leaf_noise, _leaf_specs
from esawd.es.update import _check_update_args, check_awd
from esawd.types import Params, Seeds

PRECISIONS = ("float32", "reference_float16")
F16 = jnp.float16


def residue_trips(seeds: Seeds, *, engines: int, antithetic: bool) -> tuple[np.ndarray, ...]:
    """The (seeds, signs) of engine 0's perturb/restore round trips in one iteration."""
    if engines < 1:
        raise ValueError(f"engines={engines} must be >= 1 (the reference's run.sh uses 8).")
    mine = np.asarray(seeds, np.uint32)[::engines]
    signs = np.ones(len(mine), np.float32)
    if antithetic:  # es.py: the mirrored pass evaluates every seed again, negated
        mine, signs = np.concatenate([mine, mine]), np.concatenate([signs, -signs])
    return mine, signs


def _add16(x: jax.Array, scale: jax.Array, y: jax.Array) -> jax.Array:
    """fp16(x + scale * y): one torch `add_(y, alpha=scale)` on float16 (float32 opmath)."""
    return (x.astype(jnp.float32) + scale * y.astype(jnp.float32)).astype(F16)


def _leaf(x, a, seeds, coeffs, trips, signs, sigma, scale, alpha_lam, spec, kind):
    noise = lambda seed: _leaf_noise(seed, spec, x.shape).astype(F16)

    def trip(i, y):
        n = noise(trips[i])
        y = _add16(y, signs[i] * sigma, n)
        return _add16(y, -signs[i] * sigma, n)

    y = lax.fori_loop(0, trips.shape[0], trip, x)
    acc = lax.fori_loop(
        0, seeds.shape[0], lambda k, acc: _add16(acc, coeffs[k], noise(seeds[k])),
        jnp.zeros(x.shape, F16),
    )  # fmt: skip
    y = _add16(y, scale, acc)
    if kind != "none":
        d = _add16(y, jnp.float32(-1.0), a)  # exact where p and p0 are close (Sterbenz)
        if kind == "l2":
            d = (d.astype(jnp.float32) * (1.0 - alpha_lam)).astype(F16)
        else:
            shrunk = (jnp.abs(d).astype(jnp.float32) - alpha_lam).astype(F16)
            d = jnp.sign(d) * jnp.maximum(shrunk, F16(0))
        y = _add16(a, jnp.float32(1.0), d)
    diff = y.astype(jnp.float32) - a.astype(jnp.float32)
    return y, jnp.sum(diff * diff)


@functools.partial(jax.jit, static_argnames=("kind", "noise_sharing"))
def _reference_step(params, anchor, seeds, coeffs, trips, signs, sigma, scale, alpha_lam, *,
                    kind, noise_sharing):  # fmt: skip
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing)
    outs = [
        _leaf(
            x.astype(F16),
            a.astype(F16),
            seeds,
            coeffs,
            trips,
            signs,
            sigma,
            scale,
            alpha_lam,
            spec,
            kind,
        )  # fmt: skip
        for x, a, spec in zip(leaves, jax.tree_util.tree_leaves(anchor), specs, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, [o[0] for o in outs]), [o[1] for o in outs]


def reference_step(
    params: Params,
    anchor: HostAnchor | Params,
    seeds: Seeds,
    coeffs: jax.Array,
    *,
    alpha: float,
    population_size: int,
    sigma: float,
    engines: int,
    antithetic: bool = False,
    lam: float = 0.0,
    kind: str = "none",
    noise_sharing: str = "none",
) -> tuple[Params, dict[str, float]]:
    """One iteration of the reference's float16 in-place dynamics (module docstring).

    `params` and `anchor` (theta_0) are rounded to float16 first, as the reference's engines
    hold them; returns float16 params and `{"drift_norm": ||theta_t - theta_0||}`. Full-rank
    noise only (the reference has no low-rank mode)."""
    seeds, coeffs = _check_update_args(seeds, coeffs, alpha, population_size)
    check_awd(alpha=alpha, lam=lam, kind=kind)
    _check_noise_sharing(noise_sharing)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma={sigma} must be a positive finite noise scale (paper: 1e-3).")
    if lam == 0:
        kind = "none"
    shared = _cpu_replicas(params)
    if shared is not None:  # one CPU split into devices: compute once, as es_step does
        first = SingleDeviceSharding(min(shared.device_set, key=lambda d: d.id))
        new, metrics = reference_step(
            jax.device_put(params, first), anchor, seeds, coeffs, alpha=alpha,
            population_size=population_size, sigma=sigma, engines=engines,
            antithetic=antithetic, lam=lam, kind=kind, noise_sharing=noise_sharing,
        )  # fmt: skip
        return jax.device_put(new, shared), metrics
    if isinstance(anchor, HostAnchor):
        anchor = anchor.to_device()
    # theta_0 where theta is (replicated over the population's devices)
    anchor = jax.tree.map(lambda a, x: jax.device_put(a, x.sharding), anchor, params)
    trips, signs = residue_trips(seeds, engines=engines, antithetic=antithetic)
    new, squares = _reference_step(
        params, anchor, seeds, coeffs, trips, signs, jnp.float32(sigma),
        jnp.float32(alpha / population_size), jnp.float32(alpha * lam), kind=kind,
        noise_sharing=noise_sharing,
    )  # fmt: skip
    total = float(np.sum(np.asarray(jax.device_get(squares), np.float64)))
    return new, {"drift_norm": math.sqrt(total)}
