"""Evolution Strategies with Anchored Weight Decay over parameter pytrees.

Implements Algorithm 1 of Schweighofer et al. (2026), "Overcoming Forgetting in LLM
Fine-Tuning with Evolution Strategies":

    for t = 1..T:
        sample seeds s_1..s_N
        R_n = reward(theta_{t-1} + sigma * eps(s_n))                 (evaluate_population)
        z = (R - mean R) / (std R + 1e-8)                            (normalize_rewards)
        theta_t = theta_{t-1} + alpha / N * sum_n z_n eps(s_n)       (es_update)
        theta_t = theta_t - alpha * lam * l'(theta_t - theta_0)      (anchored_decay, step 8)

`es_step` fuses the last two lines with theta_0 held in host memory.

Noise. `eps(s)` is never stored: every slice is regenerated from a key that is a pure
function of (seed, leaf path, layer index). Leaves whose path contains the key `"layers"`
are stacked decoder weights `[L, ...]`; layer i of such a leaf has its own key, so one
layer slice can be regenerated alone, on any device, in any order, and equals the
corresponding part of the full draw. The reference implementation instead reseeds its
generator for every tensor, so all tensors of one shape share their noise within a member;
`noise_sharing="shape"` reproduces that (a reproduction switch, off by default).

Dtype policy. Master parameters are float32. With alpha = 5e-4 the per-step change
(~alpha * |z| ~ 1e-4 per coordinate at most, usually far less) is below bfloat16's
resolution (2^-8 relative) for typical weights, so an update applied in bfloat16 is mostly
rounded away: this is why the reference's in-place fp16 update loses precision. Every
function here computes in float32 and casts back to each leaf's dtype, so other dtypes are
accepted, but only float32 masters accumulate small updates faithfully. Compute dtypes for
the forward pass are a separate, model-level setting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from esawd.types import Fitness, Params, PRNGKey, Seeds

STACKED_KEY = "layers"
NOISE_SHARING = ("none", "shape")
AWD_KINDS = ("none", "l1", "l2")
# Stream ids folded into a member's key so fitness randomness never reuses noise bits.
_FITNESS_STREAM = 0x5EED_F17
_SEED_STREAM = 0x5EED_5EED
_MAX_SEED = 2**31 - 1
# Slices larger than this many elements draw their noise in row chunks with one key each,
# so the generator's temporaries (several times the drawn size) stay bounded. Part of the
# noise's definition: changing it changes every large leaf's draw.
CHUNK_ELEMENTS = 2**22


# ---------------------------------------------------------------------------------------
# Noise: a pure function of (seed, leaf path, layer index).
# ---------------------------------------------------------------------------------------


def _key_name(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def is_stacked(path: Sequence[Any]) -> bool:
    """True if the leaf at `path` holds per-layer weights stacked on axis 0."""
    return any(_key_name(e) == STACKED_KEY for e in path)


def leaf_id(path: Sequence[Any]) -> int:
    """A stable 31-bit id of a leaf path (CRC32 of its `keystr`), the same in every process."""
    return zlib.crc32(jax.tree_util.keystr(tuple(path)).encode()) & _MAX_SEED


def _shape_id(shape: Sequence[int]) -> int:
    return zlib.crc32(repr(tuple(int(d) for d in shape)).encode()) & _MAX_SEED


def _check_noise_sharing(noise_sharing: str) -> None:
    if noise_sharing not in NOISE_SHARING:
        raise ValueError(
            f"noise_sharing={noise_sharing!r} is not one of {NOISE_SHARING}; use 'none' "
            "(independent noise per leaf and layer) or 'shape' (the reference's correlated noise)."
        )


@dataclasses.dataclass(frozen=True)
class _LeafSpec:
    """Static facts about one leaf that the noise and update kernels need."""

    stacked: bool
    slice_shape: tuple[int, ...]  # shape of one layer slice (the whole leaf if unstacked)
    stream: int  # leaf id, or shape id under noise_sharing="shape"
    per_layer: bool  # fold the layer index into the key

    @property
    def chunk_rows(self) -> int:
        """Rows of the slice drawn per key: large slices are drawn in row chunks."""
        if len(self.slice_shape) == 0:
            return 1
        row = math.prod(self.slice_shape[1:])
        return max(1, min(self.slice_shape[0], CHUNK_ELEMENTS // max(row, 1)))

    @property
    def num_chunks(self) -> int:
        if len(self.slice_shape) == 0:
            return 1
        return -(-self.slice_shape[0] // self.chunk_rows)


def _spec(path: Sequence[Any], shape: Sequence[int], noise_sharing: str) -> _LeafSpec:
    stacked = is_stacked(path) and len(shape) >= 1
    slice_shape = tuple(int(d) for d in (shape[1:] if stacked else shape))
    if noise_sharing == "shape":
        # Reference semantics: one generator reseeded per tensor, so a member's noise
        # depends only on the tensor's shape; every layer gets the same draw.
        return _LeafSpec(stacked, slice_shape, _shape_id(slice_shape), per_layer=False)
    return _LeafSpec(stacked, slice_shape, leaf_id(path), per_layer=stacked)


def _leaf_specs(params: Params, noise_sharing: str) -> list[_LeafSpec]:
    _check_noise_sharing(noise_sharing)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [_spec(path, jnp.shape(leaf), noise_sharing) for path, leaf in flat]


def _chunk_noise(seed: jax.Array, spec: _LeafSpec, layer, chunk) -> jax.Array:
    """Noise for rows [chunk * R, (chunk + 1) * R) of one slice (padded past its end)."""
    key = jax.random.fold_in(jax.random.key(seed), spec.stream)
    if spec.per_layer:
        key = jax.random.fold_in(key, layer)
    if spec.num_chunks == 1:
        return jax.random.normal(key, spec.slice_shape, jnp.float32)
    key = jax.random.fold_in(key, chunk)
    return jax.random.normal(key, (spec.chunk_rows, *spec.slice_shape[1:]), jnp.float32)


def _unchunk(chunks: jax.Array, spec: _LeafSpec) -> jax.Array:
    # [C, R, ...] -> [rows, ...], dropping the padding of the last chunk.
    flat = chunks.reshape(spec.num_chunks * spec.chunk_rows, *spec.slice_shape[1:])
    return flat[: spec.slice_shape[0]]


def _slice_noise(seed: jax.Array, spec: _LeafSpec, layer: jax.Array | int) -> jax.Array:
    """Standard normal float32 noise for one slice (one layer of a stacked leaf)."""
    if spec.num_chunks == 1:
        return _chunk_noise(seed, spec, layer, 0)
    # Sequential over chunks: the generator's temporaries stay chunk-sized.
    chunks = lax.map(lambda c: _chunk_noise(seed, spec, layer, c), jnp.arange(spec.num_chunks))
    return _unchunk(chunks, spec)


def _leaf_noise(seed: jax.Array, spec: _LeafSpec, num_layers: int) -> jax.Array:
    if not spec.stacked:
        return _slice_noise(seed, spec, 0)
    # vmap over layers draws exactly the bits of each layer's own key.
    return jax.vmap(lambda i: _slice_noise(seed, spec, i))(jnp.arange(num_layers))


def slice_noise(
    seed: jax.Array | int,
    path: Sequence[Any],
    shape: Sequence[int],
    *,
    layer: int | None = None,
    noise_sharing: str = "none",
) -> jax.Array:
    """The noise of one leaf (`shape` is its full shape), or of one layer of a stacked leaf.

    Regenerated alone, it equals the matching part of `sample_noise(params, seed)`.
    """
    _check_noise_sharing(noise_sharing)
    spec = _spec(tuple(path), tuple(shape), noise_sharing)
    seed = jnp.asarray(seed, jnp.uint32)
    if layer is None:
        return _leaf_noise(seed, spec, shape[0] if spec.stacked else 0)
    if not spec.stacked or not 0 <= layer < shape[0]:
        raise ValueError(
            f"layer={layer} needs a stacked leaf (path under {STACKED_KEY!r}) with 0 <= layer < "
            f"{shape[0] if spec.stacked else 'L'}; path {jax.tree_util.keystr(tuple(path))} has "
            f"shape {tuple(shape)}."
        )
    return _slice_noise(seed, spec, layer)


@functools.partial(jax.jit, static_argnames=("noise_sharing",))
def sample_noise(params: Params, seed: jax.Array | int, *, noise_sharing: str = "none") -> Params:
    """Standard normal float32 noise shaped like `params`, a pure function of the seed."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing)
    seed = jnp.asarray(seed, jnp.uint32)
    out = [
        _leaf_noise(seed, s, jnp.shape(x)[0] if s.stacked else 0)
        for x, s in zip(leaves, specs, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("noise_sharing",))
def perturb(
    params: Params,
    seed: jax.Array | int,
    *,
    sigma: float | jax.Array,
    sign: float | jax.Array = 1.0,
    noise_sharing: str = "none",
) -> Params:
    """`params + sign * sigma * eps(seed)`, computed in float32, cast back to each leaf's dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing)
    seed = jnp.asarray(seed, jnp.uint32)
    scale = jnp.asarray(sign, jnp.float32) * jnp.asarray(sigma, jnp.float32)
    out = []
    for x, s in zip(leaves, specs, strict=True):
        eps = _leaf_noise(seed, s, jnp.shape(x)[0] if s.stacked else 0)
        out.append((x.astype(jnp.float32) + scale * eps).astype(x.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def iteration_seeds(*, base_seed: int, iteration: int, population_size: int) -> Seeds:
    """The N member seeds of iteration t: a pure function of (base_seed, t), uint32 [N]."""
    if population_size < 1:
        raise ValueError(f"population_size={population_size} must be >= 1.")
    key = jax.random.fold_in(jax.random.key(base_seed), _SEED_STREAM)
    key = jax.random.fold_in(key, iteration)
    bits = jax.random.bits(key, (population_size,), jnp.uint32)
    return bits >> 1  # 31-bit seeds: safe as int32 anywhere they travel


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
# The ES update and anchored weight decay.
# ---------------------------------------------------------------------------------------


def _slice_delta(seeds: jax.Array, coeffs: jax.Array, spec: _LeafSpec, layer) -> jax.Array:
    """sum_k coeffs_k * eps_k for one slice; one noise chunk live at a time."""

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


def _updated(x: jax.Array, delta: jax.Array, scale: jax.Array) -> jax.Array:
    return (x.astype(jnp.float32) + scale * delta).astype(x.dtype)


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


@functools.partial(jax.jit, static_argnames=("population_size", "noise_sharing"))
def _es_update(params, seeds, coeffs, alpha, *, population_size, noise_sharing):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing)
    seeds = seeds.astype(jnp.uint32)
    coeffs = coeffs.astype(jnp.float32)
    scale = alpha / population_size
    out = []
    for x, s in zip(leaves, specs, strict=True):
        if not s.stacked:
            out.append(_updated(x, _slice_delta(seeds, coeffs, s, 0), scale))
            continue

        # Layer by layer: the live extra memory is one noise slice plus the accumulator.
        def layer_body(i, y, s=s):
            new = _updated(y[i], _slice_delta(seeds, coeffs, s, i), scale)
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
) -> Params:
    """`theta + alpha / population_size * sum_k coeffs_k * eps(seed_k)`, slice by slice."""
    seeds, coeffs = _check_update_args(seeds, coeffs, alpha, population_size)
    _check_noise_sharing(noise_sharing)
    return _es_update(
        params,
        seeds,
        coeffs,
        jnp.float32(alpha),
        population_size=population_size,
        noise_sharing=noise_sharing,
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
# The host-resident anchor and the fused step.
# ---------------------------------------------------------------------------------------


def _memory_sharding(x: Any, memory_kind: str):
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = SingleDeviceSharding(jax.local_devices()[0])
    return sharding.with_memory_kind(memory_kind)


def _slice_sharding(sharding):
    """The sharding of `x[i]` given the sharding of a stacked `x`."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        if spec and spec[0] is not None:
            raise ValueError(f"stacked leaves must not be sharded on the layer axis, got {spec}.")
        return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]), memory_kind="device")
    return sharding.with_memory_kind("device")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class HostAnchor:
    """theta_0 in host memory (`pinned_host`), stacked leaves split into per-layer arrays.

    Splitting the layers up front lets `es_step` copy one layer at a time to the device,
    so the anchor never occupies more device memory than one slice.
    """

    treedef: Any
    stacked: tuple[bool, ...]
    leaves: list[Any]  # per leaf: a pinned_host array, or a list of per-layer ones

    def tree_flatten(self):
        return (self.leaves,), (self.treedef, self.stacked)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])

    def arrays(self) -> list[jax.Array]:
        """Every host array of the anchor, flattened."""
        return jax.tree_util.tree_leaves(self.leaves)

    def to_device(self) -> Params:
        """A device-resident copy of theta_0 with the original pytree structure."""
        out = []
        for st, leaf in zip(self.stacked, self.leaves, strict=True):
            if st:
                parts = [jax.device_put(a, a.sharding.with_memory_kind("device")) for a in leaf]
                out.append(jnp.stack(parts))
            else:
                out.append(jax.device_put(leaf, leaf.sharding.with_memory_kind("device")))
        return jax.tree_util.tree_unflatten(self.treedef, out)


def _local_whole(x: Any) -> Any:
    """`x` on one local device: this process's copy of replicated data, or gathered."""
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
        return x
    if x.is_fully_replicated:
        return x.addressable_data(0)
    if not x.is_fully_addressable:
        raise ValueError(
            f"a multi-process anchor needs replicated parameters; got sharding {x.sharding}."
        )
    return jax.device_put(x, SingleDeviceSharding(jax.local_devices()[0]))


def host_anchor(params: Params) -> HostAnchor:
    """Copy theta_0 into host memory (`pinned_host`), split layer by layer.

    One copy per process, in the pinned host memory of its first local device, whatever the
    parameters' sharding: `es_step` copies each slice to wherever the parameters live.
    """
    host = SingleDeviceSharding(jax.local_devices()[0], memory_kind="pinned_host")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    stacked, leaves = [], []
    for path, x in flat:
        x = _local_whole(x)
        st = is_stacked(path) and np.ndim(x) >= 1
        if st:
            leaves.append([jax.device_put(x[i], host) for i in range(np.shape(x)[0])])
        else:
            leaves.append(jax.device_put(x, host))
        stacked.append(st)
    return HostAnchor(treedef, tuple(stacked), leaves)


def _to_device(a: jax.Array, target) -> jax.Array:
    """Copy a host slice to the device sharding `target`, across processes if need be."""
    if target.is_fully_addressable:
        return jax.device_put(a, target)
    if not target.is_fully_replicated:
        raise ValueError(f"multi-process parameters must be replicated; got {target}.")
    # Each process fills its own devices from its own host copy (no cross-host transfer).
    shards = [
        jax.device_put(a, SingleDeviceSharding(d, memory_kind="device"))
        for d in target.addressable_devices
    ]
    return jax.make_array_from_single_device_arrays(a.shape, target, shards)


def _drift_sq(y: jax.Array, anchor: jax.Array) -> jax.Array:
    d = y.astype(jnp.float32) - anchor.astype(jnp.float32)
    return jnp.sum(d * d)


@functools.partial(jax.jit, static_argnames=("spec", "kind", "drift"), donate_argnums=0)
def _leaf_step(x, anchor, seeds, coeffs, scale, alpha_lam, *, spec, kind, drift):
    # Cast between the two steps so the fused result equals es_update then anchored_decay.
    y = _updated(x, _slice_delta(seeds, coeffs, spec, 0), scale)
    if kind != "none":
        y = _decayed(y, anchor, alpha_lam, kind)
    return y, (_drift_sq(y, anchor) if drift else jnp.float32(0))


@functools.partial(jax.jit, static_argnames=("spec", "kind", "drift"), donate_argnums=0)
def _layer_step(x, layer, anchor, seeds, coeffs, scale, alpha_lam, *, spec, kind, drift):
    # x: [L, ...] donated, so the slice is written in place.
    y = _updated(x[layer], _slice_delta(seeds, coeffs, spec, layer), scale)
    if kind != "none":
        y = _decayed(y, anchor, alpha_lam, kind)
    sq = _drift_sq(y, anchor) if drift else jnp.float32(0)
    return lax.dynamic_update_index_in_dim(x, y, layer, 0), sq


def _cpu_replicas(params: Params) -> jax.sharding.Sharding | None:
    """The sharding of `params` when they are replicated over several CPU devices of this
    process (`jax_num_cpu_devices`, the trainer's distributed.cpu_devices), else None."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(isinstance(x, jax.Array) for x in leaves):
        return None
    sharding = leaves[0].sharding
    devices = sharding.device_set
    if (
        len(devices) < 2
        or any(d.platform != "cpu" for d in devices)
        or not sharding.is_fully_addressable
        or not all(x.sharding == sharding and x.is_fully_replicated for x in leaves)
    ):
        return None
    return sharding


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
    with_drift: bool = False,
) -> Params | tuple[Params, float]:
    """The fused ES update + AWD, streaming theta_0 from host memory slice by slice.

    `params` is donated: its buffers are reused for the result, so the caller must not use
    the input afterwards. Equals `anchored_decay(es_update(...), anchor)` to float32 rounding.
    With `with_drift=True` it returns `(params, ||theta_t - theta_0||)`, computed from the
    anchor slices already on the device (per-slice float32 sums, added in float64).
    """
    seeds, coeffs = _check_update_args(seeds, coeffs, alpha, population_size)
    check_awd(alpha=alpha, lam=lam, kind=kind)
    shared = _cpu_replicas(params)
    if shared is not None:
        # One CPU split into devices: replicas would share its cores and only repeat the same
        # work, so the step runs once, on the first device, and is copied to the others.
        first = SingleDeviceSharding(min(shared.device_set, key=lambda d: d.id))
        one = jax.device_put(params, first)
        del params  # donated, as below
        out = es_step(
            one, anchor, seeds, coeffs, alpha=alpha, population_size=population_size, lam=lam,
            kind=kind, noise_sharing=noise_sharing, with_drift=with_drift,
        )  # fmt: skip
        if with_drift:
            return jax.device_put(out[0], shared), out[1]
        return jax.device_put(out, shared)
    if lam == 0:
        kind = "none"
    needs_anchor = kind != "none" or with_drift
    if needs_anchor and not isinstance(anchor, HostAnchor):
        raise TypeError(
            f"es_step with AWD or with_drift needs a HostAnchor (see host_anchor), got "
            f"{type(anchor)}."
        )
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if needs_anchor and anchor.treedef != treedef:
        raise ValueError(
            f"the anchor's structure does not match params:\n  anchor {anchor.treedef}\n  "
            f"params {treedef}\nBuild it with host_anchor(initial_params)."
        )
    specs = _leaf_specs(params, noise_sharing)
    scale = jnp.float32(alpha / population_size)
    alpha_lam = jnp.float32(alpha * lam)
    anchor_leaves = anchor.leaves if needs_anchor else [None] * len(leaves)
    kw = dict(kind=kind, drift=with_drift)
    out, squares = [], []
    for x, s, a in zip(leaves, specs, anchor_leaves, strict=True):
        if not s.stacked:
            a_dev = None if a is None else _to_device(a, _memory_sharding(x, "device"))
            y, sq = _leaf_step(x, a_dev, seeds, coeffs, scale, alpha_lam, spec=s, **kw)
            out.append(y)
            squares.append(sq)
            continue
        target = _slice_sharding(x.sharding) if a is not None else None
        for i in range(x.shape[0]):
            # The copy of layer i+1 is dispatched while layer i computes (async dispatch).
            a_dev = None if a is None else _to_device(a[i], target)
            x, sq = _layer_step(x, i, a_dev, seeds, coeffs, scale, alpha_lam, spec=s, **kw)
            squares.append(sq)
        out.append(x)
    new = jax.tree_util.tree_unflatten(treedef, out)
    if not with_drift:
        return new
    if all(sq.is_fully_addressable for sq in squares):
        values = np.asarray(jax.device_get(squares), np.float64)  # one transfer
    else:
        values = np.array([host_value(sq) for sq in squares], np.float64)
    return new, math.sqrt(float(values.sum()))


# ---------------------------------------------------------------------------------------
# Population evaluation, sharded over the `pop` mesh axis.
# ---------------------------------------------------------------------------------------


def host_value(x: jax.Array) -> Any:
    """A (possibly multi-process) array as host numpy: replicated values from the local copy,
    sharded ones gathered from every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def fitness_key(seed: jax.Array | int) -> PRNGKey:
    """The PRNG key handed to `fitness` for a member: its own stream, distinct from its noise."""
    return jax.random.fold_in(jax.random.key(jnp.asarray(seed, jnp.uint32)), _FITNESS_STREAM)


def population_mesh(devices: Sequence[jax.Device] | None = None, *, axis_name: str = "pop") -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes) named `axis_name`."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (axis_name,))


@functools.lru_cache(maxsize=32)
def _population_fn(fitness, mesh: Mesh, axis_name: str, noise_sharing: str, members_per_batch):
    def local(params, seeds, signs, sigma):  # seeds, signs: [members on this device]
        def member(args):
            seed, sign = args
            p = perturb(params, seed, sigma=sigma, sign=sign, noise_sharing=noise_sharing)
            return jax.tree.map(jnp.asarray, fitness(p, fitness_key(seed)))

        if members_per_batch in (None, 1):
            if seeds.shape[0] == 1:  # one member per device: no loop around the fitness
                return jax.tree.map(lambda x: x[None], member((seeds[0], signs[0])))
            # A plain sequential map. lax.map(batch_size=1) would vmap the fitness over a
            # size-1 axis, which turns a generation loop's carry into per-step selects/copies.
            return lax.map(member, (seeds, signs))
        return lax.map(member, (seeds, signs), batch_size=members_per_batch)

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
        # Members never communicate; without this, fitness functions that build fresh
        # (device-invariant) loop carries, such as a zero KV cache, fail the varying-axis check.
        check_vma=False,
    )
    return jax.jit(sharded)


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
) -> Any:
    """Rewards `fitness(perturb(params, s), key_s)` of every member, sharded over `axis_name`.

    Returns `[N]`, or `[2, K]` with `antithetic=True` (row 0: +eps, row 1: -eps, same key).
    `fitness` may also return a pytree of arrays (e.g. generated tokens for host-side
    scoring); each leaf then gains the same leading member axes.
    Members are padded to a multiple of the axis size and the padding dropped, so N need not
    divide evenly. `members_per_batch` vmaps that many members at once on each device
    (default: one at a time). `fitness` should be a stable function object: the compiled
    evaluation is cached per (fitness, mesh).
    """
    _check_noise_sharing(noise_sharing)
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
    pad = (-n) % width
    seeds_p = np.concatenate([seeds, np.repeat(seeds[-1:], pad)])
    signs_p = np.concatenate([signs, np.repeat(signs[-1:], pad)])
    fn = _population_fn(fitness, mesh, axis_name, noise_sharing, members_per_batch)
    # Every device needs the full parameters; a no-op when they are already replicated.
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    out = fn(params, seeds_p, signs_p, jnp.float32(sigma))
    shape = (2, k) if antithetic else (n,)
    return jax.tree.map(lambda x: x[:n].reshape(*shape, *x.shape[1:]), out)
