"""The decoder: Llama 3.x / SmolLM2 / Qwen2 in Flax linen, as pure functions over a param dict.

Architecture (Touvron et al. 2023; Qwen2 technical report 2024): pre-norm blocks of grouped-
query attention with rotary position embeddings and a SwiGLU MLP, RMSNorm everywhere. The
decoder layers are one `nn.scan`ned block, so every per-layer weight is stacked on a leading
layer axis under params["layers"] (the layout `esawd.es` perturbs) and compile time does not
grow with depth.

Parameter layout (float32 masters; kernels are [in, out], i.e. the transpose of torch's):

    embed/embedding        [V, D]
    layers/attn_norm/scale [L, D]
    layers/attn/{q,k,v}_proj/kernel [L, D, H*hd | K*hd]   (+ bias [L, H*hd | K*hd] for Qwen2)
    layers/attn/o_proj/kernel       [L, H*hd, D]
    layers/mlp_norm/scale  [L, D]
    layers/mlp/{gate,up}_proj/kernel [L, D, F];  layers/mlp/down_proj/kernel [L, F, D]
    norm/scale             [D]
    lm_head/kernel         [D, V]   (only when the embeddings are untied)

One attention code path serves the full forward pass, prefill into a KV cache and one-token
decoding: a query at row t may attend to key slot s iff s <= write_index + t and the key slot is
valid (a real token). The KV cache holds keys as [L, B, K, hd, S] and values as [L, B, K, S, hd],
so both decode-step attention products are plain batched matmuls over (batch, kv-head) that
read the cache without transposing it.

A population member's low-rank perturbation (`esawd.es.member_perturbation`) enters as the
variable collection "perturbation", shaped like the params: a matrix's entry is its factors
`{"a": [.., m, r], "b": [.., n, r]}` and every `x W` becomes `x W + (x a) b^T`, so the members
of a batch share the weights and `W + a b^T` is never formed; a norm scale's or bias's entry
is the member's perturbed value, used in place of the param.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from esawd.models.config import ModelConfig, rope_inv_freq
from esawd.types import Params

Cache = dict[str, jax.Array]  # {"k": [L, B, K, hd, S], "v": [L, B, K, S, hd]}

_MASKED = -1e30  # finite, so a query row with no valid key gives uniform weights, not NaN
PERTURBATION = "perturbation"  # the variable collection of a member's factored perturbation


def _perturbed(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
    """The member's value of a norm scale or bias when a perturbation is given, else `value`."""
    if module.has_variable(PERTURBATION, name):
        return module.get_variable(PERTURBATION, name)
    return value


def _lowrank(x: jax.Array, factors: dict[str, jax.Array]) -> jax.Array:
    """`x (a b^T)` as `(x a) b^T`: x [..., m], a [m, r], b [n, r] -> [..., n]."""
    xa = jnp.einsum("...m,mr->...r", x, factors["a"])
    return jnp.einsum("...r,nr->...n", xa, factors["b"])


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled in the input dtype (as transformers does)."""

    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        scale = _perturbed(self, "scale", scale)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding, half-split convention: x [B, T, N, hd]; cos/sin [B, T, hd]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def rope_tables(config: ModelConfig, positions: jax.Array, dtype: Any) -> tuple[jax.Array, ...]:
    """cos and sin tables [B, T, hd] for integer positions [B, T], computed in float32."""
    inv_freq = jnp.asarray(rope_inv_freq(config))  # [hd/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, hd]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class Dense(nn.Module):
    """`x W (+ b)` as flax's nn.Dense computes it (same params, dtype=None: the pre-cast
    params' dtype), plus a member's low-rank term `(x a) b^T` when a perturbation is given."""

    features: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)  # HF's initializer_range
        kernel = self.param("kernel", init, (x.shape[-1], self.features), jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            bias = _perturbed(self, "bias", bias)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=None)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if self.has_variable(PERTURBATION, "kernel"):
            y = y + _lowrank(x, self.get_variable(PERTURBATION, "kernel"))
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


class Embed(nn.Module):
    """Token embeddings as flax's nn.Embed (lookup, and `attend` for a tied head), plus a
    member's low-rank term: rows `a[ids] b^T` on lookup, `(h b) a^T` in `attend`."""

    num_embeddings: int
    features: int

    def setup(self):
        init = nn.initializers.normal(0.02)
        shape = (self.num_embeddings, self.features)
        self.embedding = self.param("embedding", init, shape, jnp.float32)

    def _factors(self) -> dict[str, jax.Array] | None:
        if self.has_variable(PERTURBATION, "embedding"):
            return self.get_variable(PERTURBATION, "embedding")
        return None

    def __call__(self, ids: jax.Array) -> jax.Array:
        out = jnp.take(self.embedding, ids, axis=0)
        f = self._factors()
        if f is not None:  # E[t] = a[t] b^T
            out = out + jnp.einsum("...r,nr->...n", jnp.take(f["a"], ids, axis=0), f["b"])
        return out

    def attend(self, h: jax.Array) -> jax.Array:
        h, embedding = nn.dtypes.promote_dtype(h, self.embedding, dtype=None)
        out = jnp.dot(h, embedding.T)
        f = self._factors()
        if f is not None:  # h (W + a b^T)^T = h W^T + (h b) a^T
            out = out + _lowrank(h, {"a": f["b"], "b": f["a"]})
        return out


def _dense(features: int, name: str, *, bias: bool = False) -> Dense:
    return Dense(features, use_bias=bias, name=name)


class Attention(nn.Module):
    """Grouped-query attention with rotary embeddings and an optional KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, key_valid, cache, layer, write_index):
        c = self.config
        B, T, _ = x.shape
        H, K, G, hd = c.n_heads, c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim
        if self.has_variable("params", "qkv_proj"):
            # Decode-time layout from `fuse_layer_params`: one matmul instead of three.
            qkv = _dense((H + 2 * K) * hd, "qkv_proj", bias=c.qkv_bias)(x)
            q, k, v = jnp.split(qkv, [H * hd, (H + K) * hd], axis=-1)
        else:
            q = _dense(H * hd, "q_proj", bias=c.qkv_bias)(x)
            k = _dense(K * hd, "k_proj", bias=c.qkv_bias)(x)
            v = _dense(K * hd, "v_proj", bias=c.qkv_bias)(x)
        q = _rotate(q.reshape(B, T, H, hd), cos, sin)
        k = _rotate(k.reshape(B, T, K, hd), cos, sin)
        # Keys are kept transposed, [B, K, hd, T]: q.k^T is then a plain matmul, which is
        # twice as fast on CPU as contracting the minor axis of both operands.
        k = k.transpose(0, 2, 3, 1)  # [B, K, hd, T]
        v = v.reshape(B, T, K, hd).transpose(0, 2, 1, 3)  # [B, K, T, hd]
        if cache is not None:
            ck, cv = cache["k"], cache["v"]
            if layer is None:  # this layer's own cache: k [B, K, hd, S], v [B, K, S, hd]
                ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, 0, 0, write_index))
                cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, 0, write_index, 0))
                k, v = ck, cv
            else:  # the stacked cache, carried by the layer scan so XLA updates it in place
                ck = jax.lax.dynamic_update_slice(
                    ck, k[None].astype(ck.dtype), (layer, 0, 0, 0, write_index)
                )
                cv = jax.lax.dynamic_update_slice(
                    cv, v[None].astype(cv.dtype), (layer, 0, 0, write_index, 0)
                )
                k = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False)  # [B, K, hd, S]
                v = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False)  # [B, K, S, hd]
            cache = {"k": ck, "v": cv}
        S = v.shape[2]
        allowed = jnp.arange(S)[None, :] <= write_index + jnp.arange(T)[:, None]  # [T, S]
        allowed = allowed[None] & key_valid[:, None, :]  # [B, T, S]
        scale = np.float32(1.0 / np.sqrt(hd))
        if T == 1:  # decoding: drop the unit time axis so XLA sees plain batched matmuls
            q = q.reshape(B, K, G, hd)
            scores = jnp.einsum("bkgd,bkds->bkgs", q, k, preferred_element_type=jnp.float32)
            scores = jnp.where(allowed[:, :, None], scores * scale, _MASKED)  # [B, K, G, S]
            probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
            out = jnp.einsum("bkgs,bksd->bkgd", probs, v).reshape(B, 1, H * hd)
        else:
            q = q.reshape(B, T, K, G, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
            scores = jnp.einsum("bkgtd,bkds->bkgts", q, k, preferred_element_type=jnp.float32)
            scores = jnp.where(allowed[:, None, None], scores * scale, _MASKED)  # [B,K,G,T,S]
            probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
            out = jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(B, T, H * hd)
        return _dense(c.d_model, "o_proj")(out), cache


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        if self.has_variable("params", "gate_up_proj"):  # fused decode-time layout
            gate, up = jnp.split(_dense(2 * c.d_ff, "gate_up_proj")(x), 2, axis=-1)
        else:
            gate, up = _dense(c.d_ff, "gate_proj")(x), _dense(c.d_ff, "up_proj")(x)
        return _dense(c.d_model, "down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm decoder layer; the scan carry is (hidden, cache, layer index)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, carry, cos, sin, key_valid, write_index):
        h, cache, layer = carry
        c = self.config
        a, cache = Attention(c, name="attn")(
            RMSNorm(c.rms_eps, name="attn_norm")(h), cos, sin, key_valid, cache, layer, write_index
        )
        h = h + a
        h = h + MLP(c, name="mlp")(RMSNorm(c.rms_eps, name="mlp_norm")(h))
        return (h, cache, None if layer is None else layer + 1), None


class Decoder(nn.Module):
    """Embedding, scanned layers, final norm; `logits` applies the (tied or untied) head."""

    config: ModelConfig

    def setup(self):
        c = self.config
        self.embed = Embed(c.vocab_size, c.d_model, name="embed")
        self.layers = nn.scan(
            Block,
            variable_axes={"params": 0, PERTURBATION: 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.n_layers,
        )(c, name="layers")
        self.norm = RMSNorm(c.rms_eps, name="norm")
        if not c.tie_embeddings:
            self.lm_head = _dense(c.vocab_size, "lm_head")

    def __call__(self, token_ids, positions, key_valid, cache=None, write_index=0):
        """Hidden states [B, T, D] after the final norm, and the updated cache."""
        h = self.embed(token_ids)  # [B, T, D]
        cos, sin = rope_tables(self.config, positions, h.dtype)
        (h, cache, _), _ = self.layers((h, cache, 0), cos, sin, key_valid, write_index)
        return self.norm(h), cache

    def embed_positions(self, token_ids, positions):
        """Embeddings [B, T, D] and rotary tables, the input of the first layer."""
        h = self.embed(token_ids)  # [B, T, D]
        return (h,) + rope_tables(self.config, positions, h.dtype)

    def final_norm(self, h):
        """The final RMSNorm of hidden states [..., D]."""
        return self.norm(h)

    def logits(self, h):
        """Float32 logits [..., V] from final hidden states [..., D]."""
        if self.config.tie_embeddings:
            out = self.embed.attend(h)
        else:
            out = self.lm_head(h)
        return out.astype(jnp.float32)

    def init_all(self, token_ids):
        """Touch every parameter (used only by `init_params`)."""
        mask = jnp.ones(token_ids.shape, bool)
        h, _ = self(token_ids, jnp.zeros(token_ids.shape, jnp.int32), mask)
        return self.logits(h)


def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random float32 parameters (normal(0.02) weights, unit norms) for `config`."""
    dummy = jnp.zeros((1, 2), jnp.int32)
    f32 = config.replace(dtype="float32")
    params = Decoder(f32).init(key, dummy, method=Decoder.init_all)["params"]
    return jax.tree.map(lambda x: x.astype(jnp.float32), nn.unbox(params))


def cast_params(params: Params, dtype: Any) -> Params:
    """The parameter pytree in the compute dtype (a no-op for float32)."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x if x.dtype == dtype else x.astype(dtype), params)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions [B, T]: 0, 1, ... on real tokens counted from each row's first real token."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def _variables(config: ModelConfig, params: Params, perturbation: Params | None) -> dict:
    """The Flax variables in the compute dtype: params, and a member's perturbation if any."""
    v = {"params": cast_params(params, config.dtype)}
    if perturbation is not None:
        v[PERTURBATION] = cast_params(perturbation, config.dtype)
    return v


def hidden_states(
    config: ModelConfig,
    params: Params,
    token_ids: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    *,
    cache: Cache | None = None,
    write_index: jax.Array | int = 0,
    perturbation: Params | None = None,
) -> tuple[jax.Array, Cache | None]:
    """Final hidden states [B, T, D] in the compute dtype and the updated KV cache.

    `perturbation`: one member's factored perturbation (`esawd.es.member_perturbation`)."""
    v = _variables(config, params, perturbation)
    return Decoder(config).apply(v, token_ids, positions, key_valid, cache, write_index)


def logits_from_hidden(
    config: ModelConfig, params: Params, h: jax.Array, *, perturbation: Params | None = None
) -> jax.Array:
    """Float32 logits [..., V] from final hidden states [..., D]."""
    v = _variables(config, params, perturbation)
    return Decoder(config).apply(v, h, method=Decoder.logits)


def forward(
    config: ModelConfig,
    params: Params,
    token_ids: jax.Array,
    mask: jax.Array,
    *,
    perturbation: Params | None = None,
) -> jax.Array:
    """Logits [B, T, V] (float32) for token_ids [B, T]; mask [B, T] is True on real tokens."""
    mask = jnp.asarray(mask, bool)
    h, _ = hidden_states(
        config, params, token_ids, positions_from_mask(mask), mask, perturbation=perturbation
    )
    return logits_from_hidden(config, params, h, perturbation=perturbation)


def init_cache(config: ModelConfig, *, batch: int, length: int) -> Cache:
    """A zero KV cache in the compute dtype: k [L, B, K, hd, length], v [L, B, K, length, hd]."""
    L, K, hd = config.n_layers, config.n_kv_heads, config.head_dim
    return {
        "k": jnp.zeros((L, batch, K, hd, length), config.dtype),
        "v": jnp.zeros((L, batch, K, length, hd), config.dtype),
    }


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """The expected parameter tree of `config` as shapes (no memory is allocated)."""
    shapes = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
    return jax.tree.map(lambda s: tuple(s.shape), shapes)


def unstack_layers(params: Params) -> list[Params]:
    """Per-layer parameter dicts [params["layers"][i] for each layer] (copies, made once)."""
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(n)]


def _fuse_kernels(kernels: Sequence[Any]) -> Any:
    """Kernels [.., in, out_i] side by side; for factors {"a", "b"} of rank r each, `a` side by
    side [.., in, k r] and `b` block-diagonal [.., sum out_i, k r], so that the fused low-rank
    term equals the separate ones."""
    if not isinstance(kernels[0], dict):
        return jnp.concatenate(kernels, axis=-1)
    a = jnp.concatenate([f["a"] for f in kernels], axis=-1)
    width, blocks, start = a.shape[-1], [], 0
    for f in kernels:
        r = f["b"].shape[-1]
        pad = [(0, 0)] * (f["b"].ndim - 1) + [(start, width - start - r)]
        blocks.append(jnp.pad(f["b"], pad))
        start += r
    return {"a": a, "b": jnp.concatenate(blocks, axis=-2)}


def fuse_layer_params(layer: Params) -> Params:
    """One layer's params with q/k/v and gate/up kernels concatenated (fewer, larger matmuls).

    Also fuses a layer's perturbation (the same tree with factors in place of kernels)."""
    attn, mlp = dict(layer["attn"]), dict(layer["mlp"])
    names = ("q_proj", "k_proj", "v_proj")
    qkv = {"kernel": _fuse_kernels([attn[n]["kernel"] for n in names])}
    if "bias" in attn["q_proj"]:
        qkv["bias"] = jnp.concatenate([attn[n]["bias"] for n in names], axis=-1)
    attn = {"qkv_proj": qkv, "o_proj": attn["o_proj"]}
    gate_up = _fuse_kernels([mlp["gate_proj"]["kernel"], mlp["up_proj"]["kernel"]])
    mlp = {"gate_up_proj": {"kernel": gate_up}, "down_proj": mlp["down_proj"]}
    return {**layer, "attn": attn, "mlp": mlp}


def hidden_states_unrolled(
    config: ModelConfig,
    params: Params,
    layer_params: Sequence[Params],
    token_ids: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    *,
    caches: Sequence[dict[str, jax.Array]],
    write_index: jax.Array | int,
    perturbation: Params | None = None,
    layer_perturbations: Sequence[Params] | None = None,
) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """`hidden_states` with the layers unrolled over per-layer params and caches.

    Inside a decode loop a scanned layer slices its weights and cache out of the stacked
    arrays at every step, a copy XLA:CPU cannot avoid (the matmul kernels need their own
    buffers); with per-layer arrays prepared once outside the loop there is no such copy.
    Caches are per layer: k [B, K, hd, S], v [B, K, S, hd]. Compile time grows with depth.
    `layer_params` may be in the fused layout of `fuse_layer_params`; a member's
    `perturbation` comes with its layers split the same way (`layer_perturbations`).
    Params and perturbations arrive in the compute dtype (cast once, outside the loop).
    """
    top = {"params": {k: v for k, v in params.items() if k != "layers"}}
    if perturbation is not None:
        top[PERTURBATION] = {k: v for k, v in perturbation.items() if k != "layers"}
    else:
        layer_perturbations = [None] * len(layer_params)
    dec = Decoder(config)
    h, cos, sin = dec.apply(top, token_ids, positions, method=Decoder.embed_positions)
    block = Block(config)
    new_caches = []
    for lp, pert, cache in zip(layer_params, layer_perturbations, caches, strict=True):
        v = {"params": lp} if pert is None else {"params": lp, PERTURBATION: pert}
        (h, cache, _), _ = block.apply(v, (h, cache, None), cos, sin, key_valid, write_index)
        new_caches.append(cache)
    return dec.apply(top, h, method=Decoder.final_norm), new_caches
