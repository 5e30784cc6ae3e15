"""Decoder configuration: one frozen dataclass for Llama 3.x, SmolLM2 and Qwen2/2.5.

The config is hashable so it can be a static argument of `jax.jit`; it converts to and from
the Hugging Face `config.json` layout (both the `rope_scaling` spelling of transformers 4 and
the `rope_parameters` spelling of transformers 5).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static architecture of a decoder plus its compute dtype (masters stay float32)."""

    arch: str  # "llama" (Llama 3.x, SmolLM2) or "qwen2" (Qwen2/2.5)
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    # llama3 rope scaling as sorted (key, value) pairs, e.g. (("factor", 32.0), ...), or None.
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    # Per-frequency divisors (llama.cpp's `rope_freqs.weight`); used instead of rope_scaling.
    rope_freq_factors: tuple[float, ...] | None = None
    max_position: int = 8192
    tie_embeddings: bool = True
    qkv_bias: bool = False
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    dtype: str = "float32"  # compute dtype; parameters are float32 masters whatever this is

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.arch!r}; esawd.models supports "
                f"{sorted(ARCHITECTURES)} (Llama 3.x, SmolLM2, Qwen2/2.5)"
            )
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype {self.dtype!r} is not one of {COMPUTE_DTYPES}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (e.g. `config.replace(dtype="bfloat16")`)."""
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Number of parameters (embedding counted once when tied)."""
        d, h, k, hd, f = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.d_ff
        attn = d * (h + 2 * k) * hd + h * hd * d + (int(self.qkv_bias) * (h + 2 * k) * hd)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * layer + d + head


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse rotary frequencies [head_dim // 2] in float32, as transformers computes them."""
    hd = config.head_dim
    # Same float32 arithmetic as transformers so positions far out agree to the last bit or two.
    inv = 1.0 / (
        np.float32(config.rope_theta)
        ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd)
    )
    inv = inv.astype(np.float32)
    if config.rope_freq_factors is not None:
        factors = np.asarray(config.rope_freq_factors, np.float32)
        if factors.shape != inv.shape:
            raise ValueError(
                f"rope_freq_factors has {factors.size} entries, expected head_dim/2={inv.size}"
            )
        return (inv / factors).astype(np.float32)
    if config.rope_scaling is None:
        return inv
    s = dict(config.rope_scaling)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _rope_from_hf(cfg: dict[str, Any]) -> tuple[float, tuple | None]:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    merged = {**params, **scaling}
    # rope_scaling (transformers 4) wins over rope_parameters (transformers 5) when both exist
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type", "default")
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise ValueError(
            f"unsupported rope scaling {kind!r}; esawd.models implements 'default' and 'llama3'"
        )
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in merged]
    if missing:
        raise ValueError(f"llama3 rope scaling is missing {missing} in config {merged}")
    return float(theta), tuple(sorted((k, float(merged[k])) for k in keys))


def from_hf_config(cfg: dict[str, Any], *, dtype: str = "float32") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json dict."""
    model_type = cfg.get("model_type")
    if model_type not in ARCHITECTURES:
        archs = cfg.get("architectures")
        raise ValueError(
            f"unsupported architecture model_type={model_type!r} (architectures={archs}); "
            f"esawd.models supports {sorted(ARCHITECTURES)}"
        )
    if cfg.get("use_sliding_window"):
        raise ValueError("Qwen2 sliding-window attention (use_sliding_window=true) is unsupported")
    theta, scaling = _rope_from_hf(cfg)
    n_heads = cfg["num_attention_heads"]
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    return ModelConfig(
        arch=model_type,
        vocab_size=cfg["vocab_size"],
        d_model=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        d_ff=cfg["intermediate_size"],
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position=cfg.get("max_position_embeddings", 8192),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", model_type == "llama")),
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
        bos_id=cfg.get("bos_token_id"),
        eos_ids=eos_ids,
        dtype=dtype,
    )


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json dict for `config` (transformers 4 and 5 both read it)."""
    if config.rope_freq_factors is not None:
        raise ValueError(
            "this model uses per-frequency rope factors from a GGUF file, which config.json "
            "cannot express; export is only possible for rope_scaling=None or llama3 scaling"
        )
    cfg: dict[str, Any] = {
        "architectures": [ARCHITECTURES[config.arch]],
        "model_type": config.arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_ff,
        "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if config.arch == "llama":
        cfg["attention_bias"] = config.qkv_bias
        cfg["mlp_bias"] = False
    if config.rope_scaling is not None:
        cfg["rope_scaling"] = {"rope_type": "llama3", **dict(config.rope_scaling)}
        orig = cfg["rope_scaling"]["original_max_position_embeddings"]
        cfg["rope_scaling"]["original_max_position_embeddings"] = int(orig)
    if config.bos_id is not None:
        cfg["bos_token_id"] = config.bos_id
    if config.eos_ids:
        cfg["eos_token_id"] = list(config.eos_ids) if len(config.eos_ids) > 1 else config.eos_ids[0]
    return cfg


_LLAMA32_ROPE = (
    ("factor", 32.0),
    ("high_freq_factor", 4.0),
    ("low_freq_factor", 1.0),
    ("original_max_position_embeddings", 8192.0),
)


def _qwen(d, layers, heads, kv, ff, *, vocab=151936, tie=True) -> ModelConfig:
    return ModelConfig(
        arch="qwen2", vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads,
        n_kv_heads=kv, head_dim=d // heads, d_ff=ff, rms_eps=1e-6, rope_theta=1e6,
        max_position=32768, tie_embeddings=tie, qkv_bias=True, bos_id=151643,
        # <|im_end|> and <|endoftext|>: generation_config.json's stops, which vLLM (the
        # reference's sampler) and transformers obey; config.json names only the first
        eos_ids=(151645, 151643),
    )  # fmt: skip


def _llama32(d, layers, heads, hd) -> ModelConfig:
    return ModelConfig(
        arch="llama", vocab_size=128256, d_model=d, n_layers=layers, n_heads=heads,
        n_kv_heads=8, head_dim=hd, d_ff=8192, rms_eps=1e-5, rope_theta=500000.0,
        rope_scaling=_LLAMA32_ROPE, max_position=131072, tie_embeddings=True,
        bos_id=128000, eos_ids=(128001, 128008, 128009),
    )  # fmt: skip


# name -> (Hugging Face hub id, architecture). The checkpoint's own config.json is checked
# against the preset when it is loaded, so a wrong preset fails loudly instead of silently.
PRESETS: dict[str, tuple[str, ModelConfig]] = {
    "smollm2-135m-instruct": (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        ModelConfig(
            arch="llama",
            vocab_size=49152,
            d_model=576,
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            head_dim=64,
            d_ff=1536,
            rms_eps=1e-5,
            rope_theta=100000.0,
            max_position=8192,
            tie_embeddings=True,
            bos_id=1,
            eos_ids=(2,),
        ),
    ),  # fmt: skip
    "qwen2.5-0.5b-instruct": ("Qwen/Qwen2.5-0.5B-Instruct", _qwen(896, 24, 14, 2, 4864)),
    "qwen2.5-1.5b-instruct": ("Qwen/Qwen2.5-1.5B-Instruct", _qwen(1536, 28, 12, 2, 8960)),
    "qwen2.5-3b-instruct": ("Qwen/Qwen2.5-3B-Instruct", _qwen(2048, 36, 16, 2, 11008)),
    "qwen2.5-7b-instruct": (
        "Qwen/Qwen2.5-7B-Instruct",
        _qwen(3584, 28, 28, 4, 18944, vocab=152064, tie=False),
    ),
    "llama-3.2-1b-instruct": ("meta-llama/Llama-3.2-1B-Instruct", _llama32(2048, 16, 32, 64)),
    "llama-3.2-3b-instruct": ("meta-llama/Llama-3.2-3B-Instruct", _llama32(3072, 28, 24, 128)),
}


def check_matches(expected: ModelConfig, actual: ModelConfig, *, source: str) -> None:
    """Raise if the architecture fields of two configs differ (tokens ids and dtype aside)."""
    fields = (
        "arch", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
        "d_ff", "rope_theta", "rope_scaling", "tie_embeddings", "qkv_bias",
    )  # fmt: skip
    diffs = {
        f: (getattr(expected, f), getattr(actual, f))
        for f in fields
        if getattr(expected, f) != getattr(actual, f)
    }
    if diffs:
        detail = ", ".join(f"{f}: preset {a!r} vs checkpoint {b!r}" for f, (a, b) in diffs.items())
        raise ValueError(f"checkpoint {source} does not match its preset: {detail}")
