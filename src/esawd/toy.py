"""The paper's forgetting mechanism on a toy objective (Schweighofer et al. 2026, Sec. 4).

The reward depends on only `num_constrained` of `dim` parameters. The ES update in the
unconstrained directions is alpha/N * sum_n z_n eps_n[perp], where z is independent of
eps[perp], so each step adds zero-mean noise with per-coordinate variance alpha^2 / N
(sum_n z_n^2 = N for z-scored rewards): the drift ||P_perp(theta_t - theta_0)|| is a random
walk whose squared norm grows like t * alpha^2 * (dim - k) / N. L2 anchored weight decay
turns it into a mean-reverting walk with stationary squared norm
alpha^2 (dim - k) / (N * (1 - (1 - alpha*lam)^2)), while the constrained directions still
follow the reward. Runs through the same `esawd.es` functions as the LLM trainer.

With low-rank noise (`noise_rank=r`) theta is laid out as a `[matrix_rows, dim / matrix_rows]`
matrix so that its noise is A B^T / sqrt(r); every entry still has variance 1, so the same
prediction holds (the constrained coordinates are the first k of the flattened matrix).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from esawd import es


@dataclasses.dataclass(frozen=True)
class RandomWalk:
    """The trajectory of one toy run, recorded every `record_every` iterations."""

    iterations: np.ndarray  # [R]
    drift_perp: np.ndarray  # [R] ||P_perp(theta_t - theta_0)||
    drift_constrained: np.ndarray  # [R] ||P(theta_t - theta_0)||
    loss: np.ndarray  # [R] ||theta_t[:k] - target||^2 (the negative reward)


def make_fitness(target: jax.Array):
    """Reward -||theta[:k] - target||^2: blind to every coordinate past k."""
    k = target.shape[0]

    def fitness(params, key):
        del key
        return -jnp.sum((params["w"].reshape(-1)[:k] - target) ** 2)

    return fitness


def run_random_walk(
    *,
    population_size: int,
    num_iterations: int = 500,
    dim: int = 2000,
    num_constrained: int = 10,
    target_distance: float = 0.05,
    sigma: float = 1e-3,
    alpha: float = 5e-4,
    lam: float = 0.0,
    kind: str = "none",
    seed: int = 0,
    record_every: int = 10,
    noise_rank: int = 0,
    matrix_rows: int = 40,
    theta_scale: float = 1.0,
    precision: str = "float32",
) -> RandomWalk:
    """Run ES (+ AWD) on the toy reward and record drift and loss over iterations.

    theta_0 is `theta_scale` times a standard normal draw (0.02: the magnitude of LLM
    weights, where float16 rounding bites); `precision="reference_float16"` runs the
    reference's float16 in-place dynamics (`es.reference_step`, 8 engines) instead of float32
    masters."""
    es.check_awd(alpha=alpha, lam=lam, kind=kind)
    if precision not in es.PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {es.PRECISIONS}.")
    if precision != "float32" and noise_rank:
        raise ValueError("precision='reference_float16' is full rank: use noise_rank=0.")
    if noise_rank and dim % matrix_rows:
        raise ValueError(f"dim={dim} must be a multiple of matrix_rows={matrix_rows}.")
    shape = (matrix_rows, dim // matrix_rows) if noise_rank else (dim,)
    k = num_constrained
    rng = np.random.default_rng(seed)
    theta0 = (theta_scale * rng.normal(size=dim)).astype(np.float32)
    if precision != "float32":  # the reference's engines hold float16 weights
        theta0 = theta0.astype(np.float16).astype(np.float32)
    direction = rng.normal(size=k)
    target = theta0[:k] + target_distance * direction / np.linalg.norm(direction)
    fitness = _fitness_cache(tuple(np.asarray(target, np.float32).tolist()))
    params = {"w": jnp.asarray(theta0).reshape(shape)}
    if precision != "float32":
        params = {"w": params["w"].astype(jnp.float16)}
    anchor = es.host_anchor(params)
    rows = []

    def record(t):
        w = np.asarray(params["w"], np.float64).reshape(-1)
        d = w - theta0
        loss = float(np.sum((w[:k] - target) ** 2))
        rows.append((t, np.linalg.norm(d[k:]), np.linalg.norm(d[:k]), loss))

    record(0)
    for t in range(1, num_iterations + 1):
        seeds = es.iteration_seeds(base_seed=seed, iteration=t, population_size=population_size)
        rewards = es.evaluate_population(fitness, params, seeds, sigma=sigma, rank=noise_rank)
        coeffs = es.normalize_rewards(rewards)
        kw = {"alpha": alpha, "population_size": population_size, "lam": lam, "kind": kind}
        if precision == "float32":
            params, _ = es.es_step(params, anchor, seeds, coeffs, **kw, rank=noise_rank)
        else:
            params, _ = es.reference_step(params, anchor, seeds, coeffs, **kw, sigma=sigma,
                                          engines=8)  # fmt: skip
        if t % record_every == 0 or t == num_iterations:
            record(t)
    cols = [np.asarray(c) for c in zip(*rows, strict=True)]
    return RandomWalk(*cols)


@functools.lru_cache(maxsize=8)
def _fitness_cache(target: tuple[float, ...]):
    # One function object per target, so the compiled population evaluation is reused.
    return make_fitness(jnp.asarray(target, jnp.float32))


def predicted_drift(
    iterations: np.ndarray,
    *,
    population_size: int,
    dim: int,
    num_constrained: int,
    alpha: float,
    lam: float = 0.0,
) -> np.ndarray:
    """The expected ||P_perp drift|| after t steps (root of the mean squared norm)."""
    per_step = alpha**2 * (dim - num_constrained) / population_size
    t = np.asarray(iterations, np.float64)
    if lam == 0:
        return np.sqrt(per_step * t)
    rho = (1 - alpha * lam) ** 2
    return np.sqrt(per_step * (1 - rho**t) / (1 - rho))
