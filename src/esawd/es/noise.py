"""The ES noise eps(s) of Algorithm 1 (Schweighofer et al. 2026), regenerated from seeds.

Lines 2-3 of Algorithm 1: sample seeds s_1..s_N (`iteration_seeds`) and evaluate
theta + sigma * eps(s_n) (`perturb`). `eps(s)` is never stored: every slice is regenerated
from a key that is a pure function of (seed, leaf path, layer index). Leaves whose path
contains the key `"layers"` are stacked decoder weights `[L, ...]`; layer i of such a leaf
has its own key, so one layer slice can be regenerated alone, on any device, in any order,
and equals the corresponding part of the full draw. The reference implementation instead
reseeds its generator for every tensor, so all tensors of one shape share their noise within
a member. Two reproduction switches (off by default) follow it: `noise_sharing="reference"`
draws each tensor of vLLM's fused layout (`qkv_proj`, `gate_up_proj`, embeddings, norms) as
the leading values of one standard normal stream per member, the behaviour the reference
relies on, and hands each of our unfused leaves its part; `noise_sharing="shape"` (the first,
coarser approximation) shares noise between leaves of equal shape on our unfused layout.

Low-rank noise (`rank=r >= 1`, after EGGROLL, "Evolution Strategies at the Hyperscale"): every
slice with exactly two dimensions `[m, n]` (each layer of a stacked kernel, the embedding, an
untied head) gets `E = A B^T / sqrt(r)` with `A [m, r]` and `B [n, r]` standard normal from the
slice's key, so every entry still has variance 1 and sigma means what it means at full rank;
other slices (norm scales, biases) keep full-rank noise. `member_perturbation` gives a member's
perturbation in factored form, for a forward pass that never materialises `W + sigma E`
(`esawd.models`); `sample_noise` and `perturb` give the same noise densely.

Every noise bit of the package comes from `_chunk_noise(seed, spec, layer, chunk)`, given the
static `_LeafSpec` of its leaf: the perturbation here and the update's accumulation in
`esawd.es.update` both draw through it. Another kind of noise adds its static facts to
`_LeafSpec` and its generator beside `_chunk_noise`.
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

from esawd.types import Params, Seeds

STACKED_KEY = "layers"
NOISE_SHARING = ("none", "shape", "reference")
_SEED_STREAM = 0x5EED_5EED
_MAX_SEED = 2**31 - 1
# Folded into a low-rank slice's key, so its factors never reuse a full-rank draw's bits.
_LOWRANK_STREAM = 0x10_4A_4C
# The reference mode's one stream per member: element i is drawn from the key of its chunk
# i // REFERENCE_CHUNK, so any prefix (any tensor) is the same whatever else is drawn.
_REFERENCE_STREAM = 0x7EF_5EED
REFERENCE_CHUNK = 2**16
# Slices larger than this many elements draw their noise in row chunks with one key each,
# so the generator's temporaries (several times the drawn size) stay bounded. Part of the
# noise's definition: changing it changes every large leaf's draw.
CHUNK_ELEMENTS = 2**22


# ---------------------------------------------------------------------------------------
# Leaf specs: which key a leaf's noise is drawn from, and in what pieces.
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
            "(independent noise per leaf and layer), 'reference' (the reference's fused-layout "
            "prefix noise) or 'shape' (noise shared between leaves of equal shape)."
        )


@dataclasses.dataclass(frozen=True)
class _LeafSpec:
    """Static facts about one leaf that the noise and update kernels need."""

    stacked: bool
    slice_shape: tuple[int, ...]  # shape of one layer slice (the whole leaf if unstacked)
    stream: int  # leaf id, or shape id under noise_sharing="shape"
    per_layer: bool  # fold the layer index into the key
    rank: int = 0  # low-rank factors of this rank (0: full-rank noise)
    # noise_sharing="reference": the vLLM tensor this slice is part of, as (rows, cols) in
    # torch's [out, in] layout; the slice is rows [row_offset, row_offset + its rows) of it,
    # transposed when the leaf is a [in, out] kernel. None in the other modes.
    fused: tuple[int, int] | None = None
    row_offset: int = 0
    transpose: bool = False

    @property
    def lowrank(self) -> bool:
        """True if this slice's noise is the rank-r product A B^T / sqrt(r)."""
        return self.rank > 0

    @property
    def chunk_rows(self) -> int:
        """Rows of the slice drawn per key: large slices are drawn in row chunks."""
        if len(self.slice_shape) == 0:
            return 1
        if self.lowrank or self.fused is not None:  # one draw
            return self.slice_shape[0]
        row = math.prod(self.slice_shape[1:])
        return max(1, min(self.slice_shape[0], CHUNK_ELEMENTS // max(row, 1)))

    @property
    def num_chunks(self) -> int:
        if len(self.slice_shape) == 0:
            return 1
        return -(-self.slice_shape[0] // self.chunk_rows)


def _check_rank(rank: int) -> None:
    if not (isinstance(rank, int | np.integer) and rank >= 0):
        raise ValueError(
            f"rank={rank!r} must be an int >= 0: 0 for full-rank noise, r >= 1 for noise "
            "A B^T / sqrt(r) on every 2-D weight slice (es.noise_rank)."
        )


def _spec(
    path: Sequence[Any], shape: Sequence[int], noise_sharing: str, rank: int = 0
) -> _LeafSpec:
    stacked = is_stacked(path) and len(shape) >= 1
    slice_shape = tuple(int(d) for d in (shape[1:] if stacked else shape))
    rank = int(rank) if len(slice_shape) == 2 else 0  # matrices only
    if noise_sharing == "shape":
        # Reference semantics: one generator reseeded per tensor, so a member's noise
        # depends only on the tensor's shape; every layer gets the same draw.
        return _LeafSpec(stacked, slice_shape, _shape_id(slice_shape), False, rank)
    return _LeafSpec(stacked, slice_shape, leaf_id(path), stacked, rank)


def _leaf_specs(params: Params, noise_sharing: str, rank: int = 0) -> list[_LeafSpec]:
    _check_noise_sharing(noise_sharing)
    _check_rank(rank)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if noise_sharing == "reference":
        if rank:
            raise ValueError(
                f"noise_sharing='reference' reproduces the reference's full-rank noise; it "
                f"cannot be combined with rank={rank} (use noise_rank=0)."
            )
        return _reference_specs([(tuple(p), tuple(jnp.shape(x))) for p, x in flat])
    return [_spec(path, jnp.shape(leaf), noise_sharing, rank) for path, leaf in flat]


# vLLM fuses these sibling projections into one tensor, rows in this order.
_FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _reference_specs(flat: list[tuple[tuple, tuple[int, ...]]]) -> list[_LeafSpec]:
    """Each leaf's place in vLLM's fused layout (noise_sharing="reference").

    Kernels `[in, out]` are torch's `[out, in]` transposed; q/k/v kernels (and Qwen2's q/k/v
    biases) are row blocks of `qkv_proj`, gate/up kernels of `gate_up_proj`; embeddings,
    norms and every other leaf are tensors of their own, flattened in row-major order."""
    names = {path: tuple(str(_key_name(e)) for e in path) for path, _ in flat}
    shapes = {names[path]: shape for path, shape in flat}
    specs = []
    for path, shape in flat:
        stacked = is_stacked(path) and len(shape) >= 1
        slice_shape = tuple(int(d) for d in (shape[1:] if stacked else shape))
        n = names[path]
        fused, offset, transpose = (math.prod(slice_shape), 1), 0, False
        kernel = n[-1] == "kernel" and len(slice_shape) == 2
        if kernel:
            fused, transpose = (slice_shape[1], slice_shape[0]), True
        elif n[-1] == "embedding" and len(slice_shape) == 2:
            fused = slice_shape
        group = next((g for g in _FUSED_GROUPS if len(n) >= 2 and n[-2] in g), None)
        if group is not None and (kernel or (n[-1] == "bias" and len(slice_shape) == 1)):
            sizes = []
            for member in group:
                sib = shapes.get((*n[:-2], member, n[-1]))
                sizes.append(None if sib is None else sib[-1])
            if None not in sizes:  # all siblings present: rows of the fused tensor
                offset = sum(sizes[: group.index(n[-2])])
                fused = (sum(sizes), fused[1])
        specs.append(
            _LeafSpec(stacked, slice_shape, _REFERENCE_STREAM, False, 0, fused, offset, transpose)
        )
    return specs


# ---------------------------------------------------------------------------------------
# The generator: a pure function of (seed, leaf, layer, chunk).
# ---------------------------------------------------------------------------------------


def _slice_key(seed: jax.Array, spec: _LeafSpec, layer) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(seed), spec.stream)
    if spec.per_layer:
        key = jax.random.fold_in(key, layer)
    return key


def _factors(seed: jax.Array, spec: _LeafSpec, layer) -> tuple[jax.Array, jax.Array]:
    """A [m, r] and B [n, r], standard normal float32: the low-rank slice's noise factors."""
    m, n = spec.slice_shape
    key = jax.random.fold_in(_slice_key(seed, spec, layer), _LOWRANK_STREAM)
    ab = jax.random.normal(key, (m + n, spec.rank), jnp.float32)
    return ab[:m], ab[m:]


def _lowrank_product(a: jax.Array, b: jax.Array, rank: int) -> jax.Array:
    """a b^T / sqrt(rank) in full float32 (no TF32 or bf16 passes on accelerators)."""
    prod = jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST)
    return prod * np.float32(1.0 / math.sqrt(rank))


def _stream(seed: jax.Array, start: int, stop: int) -> jax.Array:
    """Elements [start, stop) of the member's one reference-mode stream, float32."""
    key = jax.random.fold_in(jax.random.key(seed), _REFERENCE_STREAM)
    first, last = start // REFERENCE_CHUNK, -(-stop // REFERENCE_CHUNK)
    draw = lambda c: jax.random.normal(jax.random.fold_in(key, c), (REFERENCE_CHUNK,))
    values = jax.vmap(draw)(jnp.arange(first, last, dtype=jnp.uint32)).reshape(-1)
    return values[start - first * REFERENCE_CHUNK : stop - first * REFERENCE_CHUNK]


def _reference_noise(seed: jax.Array, spec: _LeafSpec) -> jax.Array:
    """A slice's part of its fused tensor, whose noise is the stream's leading values."""
    cols = spec.fused[1]
    rows = math.prod(spec.slice_shape) // cols
    start = spec.row_offset * cols
    block = _stream(seed, start, start + rows * cols).reshape(rows, cols)  # torch [out, in]
    return (block.T if spec.transpose else block).reshape(spec.slice_shape)


def _chunk_noise(seed: jax.Array, spec: _LeafSpec, layer, chunk) -> jax.Array:
    """Noise for rows [chunk * R, (chunk + 1) * R) of one slice (padded past its end)."""
    if spec.fused is not None:  # noise_sharing="reference": every layer alike
        return _reference_noise(seed, spec)
    if spec.lowrank:  # one chunk: the dense product, for checks (never on the hot path)
        return _lowrank_product(*_factors(seed, spec, layer), spec.rank)
    key = _slice_key(seed, spec, layer)
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


def _leaf_noise(seed: jax.Array, spec: _LeafSpec, shape: Sequence[int]) -> jax.Array:
    """The noise of a whole leaf of full shape `shape`."""
    if spec.fused is not None:  # reference mode: every layer has the same noise
        return jnp.broadcast_to(_reference_noise(seed, spec), tuple(shape))
    if not spec.stacked:
        return _slice_noise(seed, spec, 0)
    # vmap over layers draws exactly the bits of each layer's own key.
    return jax.vmap(lambda i: _slice_noise(seed, spec, i))(jnp.arange(shape[0]))


def _add_scaled(x: jax.Array, delta: jax.Array, scale: jax.Array) -> jax.Array:
    """`x + scale * delta` in float32, cast back to `x`'s dtype."""
    return (x.astype(jnp.float32) + scale * delta).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# Public noise API.
# ---------------------------------------------------------------------------------------


def slice_noise(
    seed: jax.Array | int,
    path: Sequence[Any],
    shape: Sequence[int],
    *,
    layer: int | None = None,
    noise_sharing: str = "none",
    rank: int = 0,
) -> jax.Array:
    """The noise of one leaf (`shape` is its full shape), or of one layer of a stacked leaf.

    Regenerated alone, it equals the matching part of `sample_noise(params, seed)`.
    """
    _check_noise_sharing(noise_sharing)
    _check_rank(rank)
    if noise_sharing == "reference":
        raise ValueError(
            "slice_noise cannot place one leaf in vLLM's fused layout without its siblings; "
            "use sample_noise(params, seed, noise_sharing='reference')."
        )
    spec = _spec(tuple(path), tuple(shape), noise_sharing, rank)
    seed = jnp.asarray(seed, jnp.uint32)
    if layer is None:
        return _leaf_noise(seed, spec, shape)
    if not spec.stacked or not 0 <= layer < shape[0]:
        raise ValueError(
            f"layer={layer} needs a stacked leaf (path under {STACKED_KEY!r}) with 0 <= layer < "
            f"{shape[0] if spec.stacked else 'L'}; path {jax.tree_util.keystr(tuple(path))} has "
            f"shape {tuple(shape)}."
        )
    return _slice_noise(seed, spec, layer)


@functools.partial(jax.jit, static_argnames=("noise_sharing", "rank"))
def sample_noise(
    params: Params, seed: jax.Array | int, *, noise_sharing: str = "none", rank: int = 0
) -> Params:
    """Standard normal float32 noise shaped like `params`, a pure function of the seed.

    rank >= 1: every 2-D slice's noise is A B^T / sqrt(rank) (dense here, for tests and
    checks; training never materialises it)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing, rank)
    seed = jnp.asarray(seed, jnp.uint32)
    out = [_leaf_noise(seed, s, jnp.shape(x)) for x, s in zip(leaves, specs, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("noise_sharing", "rank"))
def perturb(
    params: Params,
    seed: jax.Array | int,
    *,
    sigma: float | jax.Array,
    sign: float | jax.Array = 1.0,
    noise_sharing: str = "none",
    rank: int = 0,
) -> Params:
    """`params + sign * sigma * eps(seed)`, computed in float32, cast back to each leaf's dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing, rank)
    seed = jnp.asarray(seed, jnp.uint32)
    scale = jnp.asarray(sign, jnp.float32) * jnp.asarray(sigma, jnp.float32)
    out = [
        _add_scaled(x, _leaf_noise(seed, s, jnp.shape(x)), scale)
        for x, s in zip(leaves, specs, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _leaf_factors(seed: jax.Array, spec: _LeafSpec, shape: Sequence[int]):
    if not spec.stacked:
        return _factors(seed, spec, 0)
    return jax.vmap(lambda i: _factors(seed, spec, i))(jnp.arange(shape[0]))


def member_perturbation(
    params: Params,
    seed: jax.Array | int,
    *,
    sigma: float | jax.Array,
    sign: float | jax.Array = 1.0,
    noise_sharing: str = "none",
    rank: int,
) -> Params:
    """One member's low-rank perturbation in factored form: a tree shaped like `params` whose
    every 2-D-slice leaf W is replaced by `{"a": sign * sigma / sqrt(rank) * A, "b": B}`
    (`[..., m, rank]`, `[..., n, rank]`, float32), so that `W + a b^T` is the leaf of
    `perturb(params, seed, rank=rank)`, and every other leaf by its perturbed value (cast to
    its dtype, as `perturb` does).

    Traceable (vmap it over seeds for a batch of members); the models take the result as
    their `perturbation` and add `(x a) b^T` to `x W` instead of forming `W + a b^T`.
    """
    _check_rank(rank)
    if rank < 1:
        raise ValueError(
            f"member_perturbation needs rank >= 1 (got {rank}); full-rank members are "
            "perturbed densely with perturb()."
        )
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = _leaf_specs(params, noise_sharing, rank)
    seed = jnp.asarray(seed, jnp.uint32)
    scale = jnp.asarray(sign, jnp.float32) * jnp.asarray(sigma, jnp.float32)
    out = []
    for x, s in zip(leaves, specs, strict=True):
        if s.lowrank:
            a, b = _leaf_factors(seed, s, jnp.shape(x))
            out.append({"a": a * (scale * np.float32(1.0 / math.sqrt(s.rank))), "b": b})
        else:
            out.append(_add_scaled(x, _leaf_noise(seed, s, jnp.shape(x)), scale))
    return jax.tree_util.tree_unflatten(treedef, out)


def iteration_seeds(*, base_seed: int, iteration: int, population_size: int) -> Seeds:
    """The N member seeds of iteration t: a pure function of (base_seed, t), uint32 [N]."""
    if population_size < 1:
        raise ValueError(f"population_size={population_size} must be >= 1.")
    key = jax.random.fold_in(jax.random.key(base_seed), _SEED_STREAM)
    key = jax.random.fold_in(key, iteration)
    bits = jax.random.bits(key, (population_size,), jnp.uint32)
    return bits >> 1  # 31-bit seeds: safe as int32 anywhere they travel
