"""GGUF checkpoints (llama.cpp): dequantize with the `gguf` package into the stacked pytree.

llama.cpp's converter permutes the rows of the q and k projections of "llama" models so that
its rotary kernel can rotate adjacent pairs; we undo that permutation so the weights fit the
half-split rotary convention of transformers and of `esawd.models.decoder`. Qwen2 GGUF files
keep the Hugging Face row order (llama.cpp uses its NeoX rope for them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from esawd.models.config import ModelConfig
from esawd.models.hf import assemble
from esawd.types import Params

_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face tensor name of a GGUF tensor name (None for ones we do not use)."""
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}"
    return None


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, interleaved pairs -> two halves."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (the inverse of `unpermute_rows`), for writing tests."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _open(path: Path) -> Any:
    import gguf

    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises bare ValueError/IndexError on bad files
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e


def read_config(reader: Any, *, path: Path, dtype: str = "float32") -> ModelConfig:
    """The ModelConfig described by a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(
            f"{path}: unsupported GGUF architecture {arch!r}; supported: 'llama', 'qwen2'"
        )
    tensors = {t.name: t for t in reader.tensors}

    def need(key):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ValueError(f"{path}: GGUF metadata key {arch}.{key} is missing")
        return value

    d_model, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = int(tensors["token_embd.weight"].shape[-1])
    factors = None
    if "rope_freqs.weight" in tensors:
        factors = tuple(float(x) for x in np.asarray(tensors["rope_freqs.weight"].data).ravel())
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        arch=arch,
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", d_model // n_heads)),
        d_ff=int(need("feed_forward_length")),
        rms_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_freq_factors=factors,
        max_position=int(_field(reader, f"{arch}.context_length", 8192)),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias=arch == "qwen2" or "blk.0.attn_q.bias" in tensors,
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_ids=() if eos is None else (int(eos),),
        dtype=dtype,
    )


def load_gguf(path: str | os.PathLike, *, dtype: str = "float32") -> tuple[ModelConfig, Params]:
    """(config, float32 params) from a GGUF file, dequantized and un-permuted."""
    import gguf

    path = Path(path)
    reader = _open(path)
    config = read_config(reader, path=path, dtype=dtype)
    by_name = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is not None:
            by_name[name] = t

    def get(name: str) -> np.ndarray:
        if name not in by_name:
            raise KeyError(f"tensor for {name!r} is missing from the GGUF file {path}")
        t = by_name[name]
        try:
            arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        except NotImplementedError as e:
            raise ValueError(
                f"{path}: tensor {t.name!r} uses quantization {t.tensor_type.name}, which the "
                f"installed gguf package cannot dequantize ({e})"
            ) from e
        if config.arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            arr = unpermute_rows(arr, config.n_heads)
        elif config.arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            arr = unpermute_rows(arr, config.n_kv_heads)
        return arr

    return config, assemble(config, get, by_name.__contains__, source=str(path))
