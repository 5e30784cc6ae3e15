"""Sampling and scoring for the decoders of `esawd.models`, as pure jitted functions.

ES evaluates every population member by generating from perturbed parameters, so generation
is one pure function of (params, prompts, key): `generate` prefills a static KV cache and runs
the decode loop in a `lax.while_loop` inside a single `jax.jit`, exiting early once every row
has emitted an EOS. Prompts are left-padded with an explicit mask (chat templates put the EOS
token inside prompts, so padding is never detected by token value); positions come from the
mask, and prompt widths are rounded up to a bucket so new batches reuse the compiled code.

`generate(perturbation=...)` decodes a batch of ES population members at once over one copy of
the weights, each with its low-rank perturbation in factored form
(`esawd.es.member_perturbation`).

`prefill` and `decode_step` expose the same two phases one call at a time, donating the cache
so it is updated in place across calls; `sequence_log_probs` scores given continuations (for
KL penalties and GRPO), `option_log_probs` the options of multiple-choice items, each context
run once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esawd.models import (
    Cache,
    ModelConfig,
    cast_params,
    hidden_states,
    hidden_states_unrolled,
    init_cache,
    logits_from_hidden,
    positions_from_mask,
    unstack_layers,
)
from esawd.models.decoder import fuse_layer_params
from esawd.types import Params, PRNGKey

# ------------------------------------------------------------------------------ batching


def left_pad(
    sequences: Sequence[Sequence[int]], *, pad_id: int = 0, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into ids [B, T] (int32) and mask [B, T] (True on real tokens)."""
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence has {longest} tokens, longer than length={length}")
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, length - len(s) :] = s
            mask[i, length - len(s) :] = True
    return ids, mask


def _check_left_padded(mask: np.ndarray, name: str) -> None:
    if mask.ndim != 2:
        raise ValueError(f"{name} must be [batch, time], got shape {mask.shape}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"{name} row {int(empty[0])} has no real token; every prompt needs one")
    # left padded <=> once a row turns True it stays True
    bad = np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
    if bad.size:
        raise ValueError(
            f"{name} row {int(bad[0])} is not left-padded (a real token is followed by padding); "
            "build prompts with esawd.sampling.left_pad"
        )


def bucket_width(n: int, *, bucket: int) -> int:
    """The prompt width `n` is padded to: the next multiple of `bucket`."""
    return -(-n // bucket) * bucket


# ------------------------------------------------------------------------------ the two phases


def _prefill(config, params, prompt_ids, prompt_mask, cache, pert=None):
    """Run the prompt [B, P] into cache slots [0, P); logits [B, V] of its last position."""
    P, S = prompt_ids.shape[1], cache["v"].shape[3]
    cache_mask = jnp.pad(prompt_mask, ((0, 0), (0, S - P)))  # [B, S]
    h, cache = hidden_states(
        config, params, prompt_ids, positions_from_mask(prompt_mask), cache_mask, cache=cache,
        perturbation=pert,
    )  # fmt: skip
    return logits_from_hidden(config, params, h[:, -1], perturbation=pert), cache, cache_mask


def _decode(config, params, token, position, cache_mask, cache, write_index, pert=None):
    """One token per row at cache slot write_index: logits [B, V] and the updated cache."""
    cache_mask = jax.lax.dynamic_update_slice(
        cache_mask, jnp.ones((cache_mask.shape[0], 1), bool), (0, write_index)
    )
    h, cache = hidden_states(
        config, params, token[:, None], position[:, None], cache_mask, cache=cache,
        write_index=write_index, perturbation=pert,
    )  # fmt: skip
    return logits_from_hidden(config, params, h[:, 0], perturbation=pert), cache, cache_mask


def _decode_unrolled(
    config, params, layer_params, token, position, cache_mask, caches, write_index,
    pert=None, layer_perts=None,
):  # fmt: skip
    """`_decode` over per-layer params and caches (no per-step slicing of stacked arrays)."""
    cache_mask = jax.lax.dynamic_update_slice(
        cache_mask, jnp.ones((cache_mask.shape[0], 1), bool), (0, write_index)
    )
    h, caches = hidden_states_unrolled(
        config, params, layer_params, token[:, None], position[:, None], cache_mask,
        caches=caches, write_index=write_index, perturbation=pert,
        layer_perturbations=layer_perts,
    )  # fmt: skip
    return logits_from_hidden(config, params, h[:, 0], perturbation=pert), caches, cache_mask


@functools.partial(jax.jit, static_argnames="config", donate_argnames="cache")
def prefill(
    config: ModelConfig, params: Params, prompt_ids: jax.Array, prompt_mask: jax.Array, cache: Cache
) -> tuple[jax.Array, Cache, jax.Array]:
    """Fill the (donated) cache with a left-padded prompt: (logits [B, V], cache, cache_mask)."""
    return _prefill(config, cast_params(params, config.dtype), prompt_ids, prompt_mask, cache)


@functools.partial(jax.jit, static_argnames="config", donate_argnames="cache")
def decode_step(
    config: ModelConfig,
    params: Params,
    token: jax.Array,
    position: jax.Array,
    cache_mask: jax.Array,
    cache: Cache,
    write_index: jax.Array,
) -> tuple[jax.Array, Cache, jax.Array]:
    """Feed token [B] at position [B] into cache slot write_index: (logits [B, V], cache, mask)."""
    p = cast_params(params, config.dtype)
    return _decode(config, p, token, position, cache_mask, cache, write_index)


# ------------------------------------------------------------------------------ generation


def _argmax(logits):
    """First index of the maximum of logits [B, V]: int32 [B]."""
    # Two plain reductions; XLA:CPU's fused (value, index) argmax reduction is ~8x slower here.
    top = jnp.max(logits, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    first = jnp.min(jnp.where(logits == top, iota, logits.shape[-1]), axis=-1)
    return jnp.minimum(first, logits.shape[-1] - 1)  # NaN rows: no match, stay in range


def _pick(logits, key, temperature, greedy):
    if greedy:
        return _argmax(logits)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def _model_fns(config, params, pert, prompt_ids, prompt_mask, length, unroll_layers, fuse):
    """The prefill and decode-step functions of `_generate` over rows [B], and the empty cache.

    Without `pert`, the B rows are the prompts. With a batch of M members' perturbations
    (leaves [M, ...]) the rows are M x prompts, member-major: the model runs once per step over
    the shared weights (vmapped over members, which XLA turns into one matmul of all rows per
    weight) with each member's low-rank factors; each row keeps its own KV cache.

    `fuse`: the unrolled layers concatenate q/k/v and gate/up (fewer, larger matmuls). Not for
    weights split over a `model` mesh axis (esawd.mesh): splitting the fused output back into
    q, k and v would then reshuffle it between the devices at every step.
    """
    fuse_layer = fuse_layer_params if fuse else (lambda lp: lp)
    B0 = prompt_ids.shape[0]
    if pert is None:
        cache = init_cache(config, batch=B0, length=length)
        prefill = lambda c: _prefill(config, params, prompt_ids, prompt_mask, c)
        if not unroll_layers:
            return prefill, lambda *a: _decode(config, params, *a), cache
        # per-layer (fused) weights, copied once here rather than sliced at every step
        layer_params = [fuse_layer(lp) for lp in unstack_layers(params)]
        return prefill, lambda *a: _decode_unrolled(config, params, layer_params, *a), cache

    M = jax.tree.leaves(pert)[0].shape[0]
    flat = lambda x: x.reshape(M * B0, *x.shape[2:])  # [M, B0, ...] -> [B, ...]
    split = lambda x: x.reshape(M, B0, *x.shape[1:])  # [B, ...] -> [M, B0, ...]
    cache = jax.tree.map(lambda x: jnp.zeros((M, *x.shape), x.dtype),
                         init_cache(config, batch=B0, length=length))  # fmt: skip

    def prefill(cache):
        # Member by member: a member's prefill already has prompts x width rows per matmul, so
        # sharing the weights saves nothing there, and one batch of M times the rows measured
        # slower on the CPU (docs/benchmarks.md, "Low-rank noise").
        one = lambda pc: _prefill(config, params, prompt_ids, prompt_mask, pc[1], pc[0])
        logits, cache, cache_mask = jax.lax.map(one, (pert, cache))
        return flat(logits), cache, flat(cache_mask)

    if unroll_layers:
        layer_params = [fuse_layer(lp) for lp in unstack_layers(params)]
        layer_perts = jax.vmap(lambda p: [fuse_layer(lp) for lp in unstack_layers(p)])(
            pert
        )  # per layer, leaves [M, ...]

        def step(p, lps, *a):
            return _decode_unrolled(config, params, layer_params, *a, p, lps)

        args = (pert, layer_perts)
    else:
        step = lambda p, *a: _decode(config, params, *a, p)
        args = (pert,)

    def decode(token, position, cache_mask, cache, write_index):
        axes = (0,) * len(args) + (0, 0, 0, 0, None)
        logits, cache, cache_mask = jax.vmap(step, in_axes=axes)(
            *args, split(token), split(position), split(cache_mask), cache, write_index
        )
        return flat(logits), cache, flat(cache_mask)

    return prefill, decode, cache


@functools.partial(
    jax.jit,
    static_argnames=("config", "max_new_tokens", "greedy", "ignore_eos", "unroll_layers", "fuse"),
)
def _generate(
    config, params, prompt_ids, prompt_mask, eos, temperature, key, pad_id, perturbation=None, *,
    max_new_tokens, greedy, ignore_eos, unroll_layers, fuse=True,
):  # fmt: skip
    P = prompt_ids.shape[1]
    N = max_new_tokens
    params = cast_params(params, config.dtype)  # once, outside the decode loop
    if perturbation is not None:
        perturbation = cast_params(perturbation, config.dtype)
    prefill, decode, cache = _model_fns(
        config, params, perturbation, prompt_ids, prompt_mask, P + N, unroll_layers, fuse
    )  # the cache lives in the loop carry: updated in place
    logits, cache, cache_mask = prefill(cache)
    B = logits.shape[0]
    prompt_len = jnp.tile(prompt_mask.sum(axis=1).astype(jnp.int32), B // prompt_ids.shape[0])
    key, sub = jax.random.split(key)
    token = _pick(logits, sub, temperature, greedy)  # [B]
    tokens = jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(token)  # [B, N]
    is_eos = lambda t: jnp.any(t[:, None] == eos[None, :], axis=1)
    done = jnp.zeros((B,), bool) if ignore_eos else is_eos(token)
    lengths = jnp.ones((B,), jnp.int32)

    def cond(state):
        step, _, _, done, *_ = state
        return (step < N) & ~jnp.all(done)

    if unroll_layers:  # per-layer caches: [L, ...] -> L x [...], or [M, L, ...] -> L x [M, ...]
        at = 0 if perturbation is None else 1
        cache = [
            {k: jax.lax.index_in_dim(v, i, at, keepdims=False) for k, v in cache.items()}
            for i in range(config.n_layers)
        ]

    def body(state):
        step, token, tokens, done, lengths, cache, cache_mask, key = state
        # the token picked at step-1 sits at cache slot P+step-1 and position len+step-1
        logits, cache, cache_mask = decode(
            token, prompt_len + step - 1, cache_mask, cache, P + step - 1
        )
        key, sub = jax.random.split(key)
        new = jnp.where(done, pad_id, _pick(logits, sub, temperature, greedy))
        tokens = jax.lax.dynamic_update_slice(tokens, new[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        if not ignore_eos:
            done = done | is_eos(new)
        return step + 1, new, tokens, done, lengths, cache, cache_mask, key

    state = (jnp.int32(1), token, tokens, done, lengths, cache, cache_mask, key)
    _, _, tokens, _, lengths, *_ = jax.lax.while_loop(cond, body, state)
    return tokens, lengths


def generate(
    config: ModelConfig,
    params: Params,
    prompt_ids: jax.Array | np.ndarray,
    prompt_mask: jax.Array | np.ndarray,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_ids: Sequence[int] | None = None,
    key: PRNGKey | None = None,
    ignore_eos: bool = False,
    pad_id: int | None = None,
    bucket: int = 64,
    unroll_layers: bool = True,
    perturbation: Params | None = None,
    fuse_layers: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Generate from left-padded prompts [B, T]: (tokens [B, max_new_tokens], lengths [B]).

    temperature=0 is greedy; otherwise tokens are sampled at that temperature with `key`.
    Rows stop after their first token in `eos_ids` (default: config.eos_ids); tokens after it
    are `pad_id` (default: the first EOS id) and lengths count generated tokens including the
    EOS. ignore_eos=True always generates max_new_tokens (the fixed-length benchmark mode).
    unroll_layers=True decodes with the layers unrolled over per-layer copies of the weights
    (faster on CPU, compile time grows with depth); False keeps the scanned layers.
    fuse_layers=False keeps q/k/v and gate/up separate there: for weights split over a
    `model` mesh axis (`esawd.mesh.shard_params`), which the fused layout would reshuffle.

    `perturbation`: M population members' factored perturbations stacked on a leading axis
    [M] (`jax.vmap(esawd.es.member_perturbation)` over their seeds). Their M x B rows then
    decode as one batch over one copy of `params`: each weight matmul runs once for all rows,
    each member adds its own low-rank term, and member m's rows equal `generate` from its
    dense perturbed parameters (to rounding). Returns tokens [M, B, max_new_tokens] and
    lengths [M, B]; sampling draws from one key for all rows.
    """
    ids = np.asarray(prompt_ids, np.int32)
    mask = np.asarray(prompt_mask, bool)
    if ids.shape != mask.shape:
        raise ValueError(f"prompt_ids {ids.shape} and prompt_mask {mask.shape} differ in shape")
    _check_left_padded(mask, "prompt_mask")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = int(mask.sum(axis=1).max())
    if longest + max_new_tokens > config.max_position:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context of {config.max_position} tokens; shorten the prompt or max_new_tokens"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("temperature > 0 needs a PRNG key (key=jax.random.key(seed))")
    eos = tuple(config.eos_ids if eos_ids is None else eos_ids)
    if pad_id is None:
        pad_id = eos[0] if eos else 0
    # Trim to the longest prompt, then left-pad to a bucket so similar batches share one compile.
    width = max(
        longest, min(bucket_width(longest, bucket=bucket), config.max_position - max_new_tokens)
    )
    ids, mask = ids[:, ids.shape[1] - longest :], mask[:, mask.shape[1] - longest :]
    ids = np.pad(ids, ((0, 0), (width - longest, 0)), constant_values=pad_id)
    mask = np.pad(mask, ((0, 0), (width - longest, 0)))
    tokens, lengths = _generate(
        config, params, jnp.asarray(ids), jnp.asarray(mask),
        jnp.asarray(eos if eos else (-1,), jnp.int32), jnp.float32(max(temperature, 1e-6)),
        jax.random.key(0) if key is None else key, jnp.int32(pad_id), perturbation,
        max_new_tokens=max_new_tokens, greedy=temperature == 0, ignore_eos=ignore_eos or not eos,
        unroll_layers=unroll_layers, fuse=fuse_layers,
    )  # fmt: skip
    if perturbation is None:
        return tokens, lengths
    M = jax.tree.leaves(perturbation)[0].shape[0]
    return tokens.reshape(M, -1, tokens.shape[-1]), lengths.reshape(M, -1)


# ------------------------------------------------------------------------------ scoring


def token_log_probs(
    config: ModelConfig,
    params: Params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    cont_ids: jax.Array,
    cont_mask: jax.Array,
    *,
    chunk: int = 64,
) -> jax.Array:
    """Log-probabilities [B, C] of continuation tokens after left-padded prompts, 0 on padding.

    Differentiable in `params` and traceable (no host checks; `sequence_log_probs` is the
    checked entry point, GRPO's loss differentiates this). Logits are formed `chunk` tokens at
    a time under `jax.checkpoint`, so neither the forward nor the backward pass holds
    [B, C, V] at once.
    """
    P, C = prompt_ids.shape[1], cont_ids.shape[1]
    p = cast_params(params, config.dtype)  # the cast's gradient returns float32
    ids = jnp.concatenate([prompt_ids, cont_ids], axis=1)  # [B, P+C]
    mask = jnp.concatenate([prompt_mask, cont_mask], axis=1).astype(bool)  # [B, P+C]
    h, _ = hidden_states(config, p, ids, positions_from_mask(mask), mask)
    h = h[:, P - 1 : P + C - 1]  # [B, C, D]: the states that predict each continuation token
    return jnp.where(cont_mask, _picked_log_probs(config, p, h, cont_ids, chunk), 0.0)


def _picked_log_probs(config, p, h, targets, chunk):
    """log p(targets [B, C]) from the states [B, C, D] that predict them, the [B, C, V] logits
    formed `chunk` positions at a time under `jax.checkpoint`."""
    B, C = targets.shape
    chunk = min(chunk, C)
    n = -(-C // chunk)
    h = jnp.pad(h, ((0, 0), (0, n * chunk - C), (0, 0))).reshape(B, n, chunk, -1)
    targets = jnp.pad(targets, ((0, 0), (0, n * chunk - C))).reshape(B, n, chunk)

    @jax.checkpoint
    def score(args):
        h_c, t_c = args  # [B, chunk, D], [B, chunk]
        logits = logits_from_hidden(config, p, h_c)  # [B, chunk, V] float32
        picked = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    lp = jax.lax.map(score, (h.swapaxes(0, 1), targets.swapaxes(0, 1)))  # [n, B, chunk]
    return lp.swapaxes(0, 1).reshape(B, n * chunk)[:, :C]


log_probs_jit = jax.jit(token_log_probs, static_argnames=("config", "chunk"))


def _checked_masks(config, prompt_mask, ids, mask, names, layout):
    """The boolean masks of left-padded prompts and the right-padded continuations `ids`
    scored after them (shape `layout`, the prompts' rows first), checked: padding sides,
    shapes, and that prompt + continuation fit the model's context. `names`: the prompt and
    continuation argument prefixes and what a continuation is called in errors."""
    prompt, cont, what = names
    prompt_mask = np.asarray(prompt_mask, bool)
    _check_left_padded(prompt_mask, f"{prompt}_mask")
    mask = np.asarray(mask, bool)
    rank = layout.count(",") + 1
    if np.asarray(ids).shape != mask.shape or mask.ndim != rank or len(mask) != len(prompt_mask):
        raise ValueError(
            f"{cont}_ids {np.asarray(ids).shape} and {cont}_mask {mask.shape} must share a "
            f"shape {layout} with the {len(prompt_mask)} rows of {prompt}_mask"
        )
    total = int(prompt_mask.sum(axis=1).max()) + mask.shape[-1]
    if total > config.max_position:
        raise ValueError(
            f"{prompt} + {what} of {total} tokens exceeds the context of "
            f"{config.max_position} tokens"
        )
    return prompt_mask, mask


def sequence_log_probs(
    config: ModelConfig,
    params: Params,
    prompt_ids: jax.Array | np.ndarray,
    prompt_mask: jax.Array | np.ndarray,
    cont_ids: jax.Array | np.ndarray,
    cont_mask: jax.Array | np.ndarray,
    *,
    chunk: int = 64,
) -> jax.Array:
    """Log-probabilities [B, C] of continuation tokens after left-padded prompts (0 on padding).

    Continuations are right-padded (cont_mask True on real tokens), e.g. `generate`'s tokens
    with `arange(C) < lengths[:, None]`.
    """
    mask, cont_mask = _checked_masks(
        config, prompt_mask, cont_ids, cont_mask, ("prompt", "cont", "continuation"), "[B, C]"
    )
    return log_probs_jit(
        config, params, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(mask),
        jnp.asarray(cont_ids, jnp.int32), jnp.asarray(cont_mask),
        chunk=min(chunk, cont_mask.shape[1]),
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("config", "chunk"))
def _option_log_probs(config, params, ctx_ids, ctx_mask, opt_ids, opt_mask, chunk):
    items, W = ctx_ids.shape
    _, n, C = opt_ids.shape
    p = cast_params(params, config.dtype)
    # the contexts once, into a cache with room for an option after each
    cache = init_cache(config, batch=items, length=W + C)
    h, cache = hidden_states(
        config, p, ctx_ids, positions_from_mask(ctx_mask), jnp.pad(ctx_mask, ((0, 0), (0, C))),
        cache=cache,
    )  # fmt: skip
    # every option reads its item's cache: rows item-major, [I * O, ...]
    cache = jax.tree.map(lambda x: jnp.repeat(x, n, axis=1), cache)
    ids, mask = opt_ids.reshape(items * n, C), opt_mask.reshape(items * n, C)
    start = jnp.repeat(ctx_mask.sum(axis=1), n)  # each option's first position
    key_valid = jnp.concatenate([jnp.repeat(ctx_mask, n, axis=0), mask], axis=1)
    h_opt, _ = hidden_states(
        config, p, ids, start[:, None] + jnp.arange(C), key_valid, cache=cache, write_index=W
    )
    # the context's last state predicts an option's first token, option states the rest
    states = jnp.concatenate([jnp.repeat(h[:, -1:], n, axis=0), h_opt[:, :-1]], axis=1)
    lp = _picked_log_probs(config, p, states, ids, chunk)
    return jnp.where(mask, lp, 0.0).reshape(items, n, C)


def option_log_probs(
    config: ModelConfig,
    params: Params,
    ctx_ids: jax.Array | np.ndarray,
    ctx_mask: jax.Array | np.ndarray,
    opt_ids: jax.Array | np.ndarray,
    opt_mask: jax.Array | np.ndarray,
    *,
    chunk: int = 64,
) -> jax.Array:
    """Log-probabilities [I, O, C] of each of O continuations (options) after each of I
    left-padded contexts [I, W], 0 on padding: `sequence_log_probs` of every (context, option)
    pair, with each context run once and its KV cache shared by its options.

    Options are right-padded (opt_mask [I, O, C] True on real tokens); an item with fewer
    options pads with any tokens and ignores their rows. For multiple choice with long contexts
    and many options (MMLU-Pro: ten options) it was 3.3x faster than scoring each pair as its
    own sequence (benchmarks/likelihood_bench.py, docs/benchmarks.md).
    """
    mask, opt_mask = _checked_masks(
        config, ctx_mask, opt_ids, opt_mask, ("ctx", "opt", "option"), "[items, options, tokens]"
    )
    return _option_log_probs(
        config, params, jnp.asarray(ctx_ids, jnp.int32), jnp.asarray(mask),
        jnp.asarray(opt_ids, jnp.int32), jnp.asarray(opt_mask), chunk=min(chunk, opt_mask.shape[2]),
    )  # fmt: skip
