"""Population evaluation (Schweighofer et al. 2026, Algorithm 1, line 3), sharded.

    R_n = reward(theta_{t-1} + sigma * eps(s_n))                 (evaluate_population)

Members are sharded over the `pop` axis of a mesh; each device perturbs the replicated
parameters itself (`esawd.es.noise.perturb`) and calls the fitness with a key of its own
stream (`fitness_key`), distinct from the member's noise.

With low-rank noise a fitness can be `factored`: it then gets the shared parameters and a
batch of members' perturbations in factored form (`member_perturbation`, stacked on a leading
member axis), so one forward pass serves the whole batch over one copy of the weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from esawd.es.noise import _check_noise_sharing, _check_rank, member_perturbation, perturb
from esawd.types import Fitness, Params, PRNGKey, Seeds

# Stream id folded into a member's key so fitness randomness never reuses noise bits.
_FITNESS_STREAM = 0x5EED_F17


def fitness_key(seed: jax.Array | int) -> PRNGKey:
    """The PRNG key handed to `fitness` for a member: its own stream, distinct from its noise."""
    return jax.random.fold_in(jax.random.key(jnp.asarray(seed, jnp.uint32)), _FITNESS_STREAM)


def population_mesh(devices: Sequence[jax.Device] | None = None, *, axis_name: str = "pop") -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes) named `axis_name`."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (axis_name,))


def _factored_local(fitness, noise_sharing: str, rank: int, members_per_batch: int):
    """The device-local evaluation of a factored fitness: members in batches of
    `members_per_batch`, each batch one call over the shared parameters."""

    def batch(params, seeds, signs, sigma):  # seeds, signs: [M]
        def one(seed, sign):
            return member_perturbation(
                params, seed, sigma=sigma, sign=sign, noise_sharing=noise_sharing, rank=rank
            )

        perturbations = jax.vmap(one)(seeds, signs)  # every leaf [M, ...]
        keys = jax.vmap(fitness_key)(seeds)
        return jax.tree.map(jnp.asarray, fitness(params, perturbations, keys))

    def local(params, seeds, signs, sigma):  # [members on this device], a multiple of M
        m = min(members_per_batch, seeds.shape[0])
        if seeds.shape[0] == m:
            return batch(params, seeds, signs, sigma)
        groups = (seeds.reshape(-1, m), signs.reshape(-1, m))  # [G, M]
        out = lax.map(lambda g: batch(params, g[0], g[1], sigma), groups)
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

    return local


def _member_local(fitness, noise_sharing: str, rank: int, members_per_batch):
    """The device-local evaluation of a fitness of perturbed parameters: members one after
    another, or `members_per_batch` vmapped at a time."""

    def local(params, seeds, signs, sigma):  # seeds, signs: [members on this device]
        def member(args):
            seed, sign = args
            p = perturb(params, seed, sigma=sigma, sign=sign, noise_sharing=noise_sharing,
                        rank=rank)  # fmt: skip
            return jax.tree.map(jnp.asarray, fitness(p, fitness_key(seed)))

        if members_per_batch in (None, 1):
            if seeds.shape[0] == 1:  # one member per device: no loop around the fitness
                return jax.tree.map(lambda x: x[None], member((seeds[0], signs[0])))
            # A plain sequential map. lax.map(batch_size=1) would vmap the fitness over a
            # size-1 axis, which turns a generation loop's carry into per-step selects/copies.
            return lax.map(member, (seeds, signs))
        return lax.map(member, (seeds, signs), batch_size=members_per_batch)

    return local


def _on_mesh(params: Params, mesh: Mesh) -> Params:
    """`params` on every member of `mesh`: leaves already placed on it (`esawd.mesh.
    shard_params`, split over `model`) stay as they are; others are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(x):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(put, params)


@functools.lru_cache(maxsize=32)
def _population_fn(
    fitness, mesh: Mesh, axis_name: str, noise_sharing: str, members_per_batch, rank, factored
):
    if factored:
        local = _factored_local(fitness, noise_sharing, rank, members_per_batch or 1)
    else:
        local = _member_local(fitness, noise_sharing, rank, members_per_batch)
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(
            PartitionSpec(),
            PartitionSpec(axis_name),
            PartitionSpec(axis_name),
            PartitionSpec(),
        ),
        out_specs=PartitionSpec(axis_name),
        # Manual over `pop` only: on a ("pop", "model") mesh each member's program is
        # partitioned over its `model` devices by XLA (esawd.mesh), from the params' sharding.
        axis_names={axis_name},
        # Members never communicate; without this, fitness functions that build fresh
        # (device-invariant) loop carries, such as a zero KV cache, fail the varying-axis check.
        check_vma=False,
    )
    return jax.jit(sharded)


def _prepare(
    fitness: Fitness,
    params: Params,
    seeds: Seeds,
    *,
    sigma: float,
    antithetic: bool = False,
    mesh: Mesh | None = None,
    axis_name: str = "pop",
    members_per_batch: int | None = None,
    noise_sharing: str = "none",
    rank: int = 0,
    factored: bool = False,
) -> tuple:
    """`evaluate_population`'s checks, padding and placement: (fn, args, n, out shape)."""
    _check_noise_sharing(noise_sharing)
    _check_rank(rank)
    if factored and rank < 1:
        raise ValueError("factored=True needs low-rank noise (rank >= 1); got rank=0.")
    mesh = population_mesh(axis_name=axis_name) if mesh is None else mesh
    seeds = np.asarray(seeds, np.uint32)
    if seeds.ndim != 1 or seeds.size == 0:
        raise ValueError(f"seeds must have shape [N] with N >= 1, got {seeds.shape}.")
    k = seeds.size
    signs = np.ones(k, np.float32)
    if antithetic:
        seeds = np.concatenate([seeds, seeds])
        signs = np.concatenate([signs, -signs])
    n = seeds.size
    width = mesh.shape[axis_name]
    if factored:  # whole batches on every device
        per_device = -(-n // width)
        width *= min(members_per_batch or 1, per_device)
    pad = (-n) % width
    seeds_p = np.concatenate([seeds, np.repeat(seeds[-1:], pad)])
    signs_p = np.concatenate([signs, np.repeat(signs[-1:], pad)])
    fn = _population_fn(
        fitness, mesh, axis_name, noise_sharing, members_per_batch, int(rank), factored
    )
    args = (_on_mesh(params, mesh), seeds_p, signs_p, jnp.float32(sigma))
    return fn, args, n, (2, k) if antithetic else (n,)


def evaluate_population(
    fitness: Fitness,
    params: Params,
    seeds: Seeds,
    *,
    sigma: float,
    antithetic: bool = False,
    mesh: Mesh | None = None,
    axis_name: str = "pop",
    members_per_batch: int | None = None,
    noise_sharing: str = "none",
    rank: int = 0,
    factored: bool = False,
) -> Any:
    """Rewards `fitness(perturb(params, s), key_s)` of every member, sharded over `axis_name`.

    Returns `[N]`, or `[2, K]` with `antithetic=True` (row 0: +eps, row 1: -eps, same key).
    `fitness` may also return a pytree of arrays (e.g. generated tokens for host-side
    scoring); each leaf then gains the same leading member axes.
    Members are padded to a multiple of the axis size and the padding dropped, so N need not
    divide evenly. On a ("pop", "model") mesh (`esawd.mesh.run_mesh`) a member spans the
    `model` devices of its row; params placed with `esawd.mesh.shard_params` stay split over
    them, anything else is replicated. `members_per_batch` vmaps that many members at once on
    each device (default: one at a time). `fitness` should be a stable function object: the
    compiled evaluation is cached per (fitness, mesh).

    `rank` >= 1 perturbs with low-rank noise (`sample_noise(rank=rank)`). With `factored=True`
    (low rank only) the perturbed parameters are never formed: `fitness(params, perturbations,
    keys)` is called once per batch of `members_per_batch` members of a device, with the
    shared `params`, their `member_perturbation`s stacked on a leading axis [M] and their keys
    [M], and returns leaves with that leading axis.
    """
    fn, args, n, shape = _prepare(
        fitness, params, seeds, sigma=sigma, antithetic=antithetic, mesh=mesh, axis_name=axis_name,
        members_per_batch=members_per_batch, noise_sharing=noise_sharing, rank=rank,
        factored=factored,
    )  # fmt: skip
    out = fn(*args)
    return jax.tree.map(lambda x: x[:n].reshape(*shape, *x.shape[1:]), out)


def compile_population(
    fitness: Fitness, params: Params, seeds: Seeds, **kwargs: Any
) -> jax.stages.Compiled:
    """The program `evaluate_population(fitness, params, seeds, **kwargs)` runs, lowered and
    compiled but not run: for dry runs and `compiled.memory_analysis()`."""
    fn, args, _, _ = _prepare(fitness, params, seeds, **kwargs)
    return fn.lower(*args).compile()
