"""GGUF checkpoints (llama.cpp): read (dequantized into the stacked pytree) and written.

llama.cpp's converter permutes the rows of the q and k projections of "llama" models so that
its rotary kernel can rotate adjacent pairs; we undo that permutation so the weights fit the
half-split rotary convention of transformers and of `esawd.models.decoder`. Qwen2 GGUF files
keep the Hugging Face row order (llama.cpp uses its NeoX rope for them).

`write_gguf` is the inverse of `load_gguf`: the same names, the permutation applied again, the
metadata llama.cpp's `convert_hf_to_gguf.py` writes (hyperparameters, the byte-level BPE
vocabulary with its merges, token types and pre-tokenizer name, special tokens, chat
template), so llama.cpp-based tools and transformers' GGUF loader read the file.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from esawd.models.config import ModelConfig, rope_inv_freq
from esawd.models.hf import assemble, cast_tensor, check_export_dtype, hf_tensors
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
    """llama.cpp's q/k row permutation (the inverse of `unpermute_rows`), applied on writing."""
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


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------

GGUF_DTYPES = ("float32", "float16", "bfloat16")
_HF_TO_GGUF = {**{v: k for k, v in _TOP.items()}, **{v: k for k, v in _LAYER.items()}}

# The byte-level BPE pre-tokenizers of the supported families, by llama.cpp's name for them
# (`tokenizer.ggml.pre`), recognised from the tokenizer's own pre-tokenizer (not from a hash of
# its output as convert_hf_to_gguf.py does, which would need the original vocabulary).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
# llama.cpp's token types (gguf.TokenType)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def gguf_name(name: str) -> str:
    """The GGUF tensor name of a Hugging Face tensor name (the inverse of `hf_name`)."""
    if name in _HF_TO_GGUF:
        return _HF_TO_GGUF[name]
    prefix, _, rest = name.partition("model.layers.")
    i, _, suffix = rest.partition(".")
    if prefix or suffix not in _HF_TO_GGUF:
        raise KeyError(f"no GGUF name for tensor {name!r}")
    return f"blk.{i}.{_HF_TO_GGUF[suffix]}"


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a tokenizers pre-tokenizer (its tokenizer.json dict), or None."""

    def byte_level(p, *, regex):
        return (
            p.get("type") == "ByteLevel"
            and not p.get("add_prefix_space")
            and (p.get("use_regex", True) == regex)
        )

    if pre is None:
        return None
    if byte_level(pre, regex=True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm" if byte_level(parts[1], regex=True) else None
    if kinds == ["Split", "ByteLevel"] and byte_level(parts[1], regex=False):
        split = parts[0]
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            return _SPLIT_NAMES.get(split.get("pattern", {}).get("Regex"))
    return None


def tokenizer_metadata(tokenizer: Any, *, vocab_size: int) -> dict[str, Any]:
    """What a GGUF file says about a byte-level BPE transformers tokenizer, as llama.cpp's
    converter writes it: `vocab_size` tokens (ids the tokenizer lacks become `[PAD<i>]`,
    unused), their types, the merges, the pre-tokenizer name, the special ids and flags."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ValueError(
            f"GGUF export supports byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2); "
            f"{getattr(tokenizer, 'name_or_path', tokenizer)!r} has model "
            f"{model.get('type')!r} and decoder {decoder.get('type')!r}. Export as safetensors "
            "and convert with llama.cpp's convert_hf_to_gguf.py instead"
        )
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"the tokenizer has token id {max(vocab.values())}, but the model's vocabulary has "
            f"{vocab_size} rows; the tokenizer does not belong to this model"
        )
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # {id: AddedToken}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
            continue
        token = by_id[i]
        tokens.append(token)
        if i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(_CONTROL if added[i].special or looks_special else _USER_DEFINED)
        else:
            types.append(_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        warnings.warn(
            f"llama.cpp has no name for the pre-tokenizer {spec.get('pre_tokenizer')!r}; the "
            "GGUF says 'default', and llama.cpp will split text with its default rules",
            stacklevel=3,
        )
        pre = "default"
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        # whether encoding adds BOS / EOS around the text (Llama 3: BOS; SmolLM2, Qwen2: none)
        "add_bos": len(full) > len(plain) and full[0] == tokenizer.bos_token_id,
        "add_eos": len(full) > len(plain) and full[-1] == tokenizer.eos_token_id,
        "chat_template": template,
    }


def _rope_factors(config: ModelConfig) -> np.ndarray | None:
    """llama.cpp's `rope_freqs.weight` (per-frequency divisors) for llama3 rope scaling."""
    if config.rope_freq_factors is not None:
        return np.asarray(config.rope_freq_factors, np.float32)
    if config.rope_scaling is None:
        return None
    base = rope_inv_freq(config.replace(rope_scaling=None))
    return (base / rope_inv_freq(config)).astype(np.float32)


def write_gguf(
    config: ModelConfig,
    params: Params,
    path: str | os.PathLike,
    *,
    tokenizer: Any,
    dtype: str = "float32",
    name: str = "",
    progress: bool = False,
) -> Path:
    """Write `params` as a GGUF file that llama.cpp and `load_gguf` read; returns the path.

    Matrices are stored in `dtype` (float32, float16 or bfloat16); 1-D tensors (norms,
    biases, rope factors) stay float32, as llama.cpp's converter keeps them. llama models get
    llama.cpp's q/k row permutation. `load_gguf` of the file gives back `params` rounded to
    `dtype`; llama3 rope scaling comes back as the equivalent `rope_freq_factors`.
    """
    import gguf
    from tqdm import tqdm

    check_export_dtype(dtype, allowed=GGUF_DTYPES)
    raw = {"float32": gguf.GGMLQuantizationType.F32, "float16": gguf.GGMLQuantizationType.F16}
    if dtype == "bfloat16":
        if not hasattr(gguf.GGMLQuantizationType, "BF16"):
            raise ValueError(
                f"the installed gguf package ({getattr(gguf, '__version__', '?')}) cannot write "
                "bfloat16; upgrade it (pip install -U gguf) or export as float16 or float32"
            )
        raw["bfloat16"] = gguf.GGMLQuantizationType.BF16
    kind = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16"}[dtype]
    file_type = getattr(gguf.LlamaFileType, kind)
    if tokenizer is None:
        raise ValueError("a GGUF file carries its tokenizer: pass the model's tokenizer")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give the .gguf file to write")
    factors = _rope_factors(config)
    if factors is not None and config.arch != "llama":
        raise ValueError(f"rope scaling of a {config.arch!r} model cannot be written to GGUF")
    vocab = tokenizer_metadata(tokenizer, vocab_size=config.vocab_size)

    arch = config.arch
    w = gguf.GGUFWriter(None, arch)
    w.add_type("model")
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(config.max_position)
    w.add_embedding_length(config.d_model)
    w.add_block_count(config.n_layers)
    w.add_feed_forward_length(config.d_ff)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    bos = config.bos_id if config.bos_id is not None else vocab["bos"]
    # One EOS in GGUF: the tokenizer's when the model stops there too (Llama 3's <|eot_id|>),
    # else the first stop token of the config; llama.cpp also stops at other end-of-generation
    # tokens it recognises by name.
    eos = vocab["eos"] if vocab["eos"] in config.eos_ids else next(iter(config.eos_ids), None)
    for add, token_id in (
        (w.add_bos_token_id, bos),
        (w.add_eos_token_id, eos),
        (w.add_unk_token_id, vocab["unk"]),
        (w.add_pad_token_id, vocab["pad"]),
    ):
        if token_id is not None:
            add(int(token_id))
    w.add_add_bos_token(bool(vocab["add_bos"]))
    w.add_add_eos_token(bool(vocab["add_eos"]))
    if vocab["chat_template"]:
        w.add_chat_template(vocab["chat_template"])

    # (GGUF name, host array, permutation heads or 0, type); nothing is converted yet
    tensors: list[tuple[str, np.ndarray, int, str]] = []
    if factors is not None:
        tensors.append(("rope_freqs.weight", factors, 0, "float32"))
    for hf, arr in hf_tensors(config, params):
        heads = 0
        if arch == "llama" and ".self_attn.q_proj." in hf:
            heads = config.n_heads
        elif arch == "llama" and ".self_attn.k_proj." in hf:
            heads = config.n_kv_heads
        tensors.append((gguf_name(hf), arr, heads, dtype if arr.ndim > 1 else "float32"))
    total = 0
    for gname, arr, _, kind in tensors:
        np_dtype = np.uint16 if kind == "bfloat16" else check_export_dtype(kind)
        nbytes = int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        w.add_tensor_info(gname, arr.shape, np.dtype(np_dtype), nbytes, raw_dtype=raw[kind])
        total += nbytes

    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"gguf {dtype}", disable=not progress)
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for gname, arr, heads, kind in tensors:
            data = permute_rows(np.asarray(arr), heads) if heads else arr
            data = cast_tensor(gname, data, kind)
            w.write_tensor_data(data.view(np.uint16) if kind == "bfloat16" else data)
            bar.update(data.nbytes)
        w.close()
        # Rename last so an interrupted export never leaves a truncated file behind.
        os.replace(tmp, path)
    finally:
        w.close()
        bar.close()
        tmp.unlink(missing_ok=True)
    return path
