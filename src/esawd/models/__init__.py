"""Decoder models (Llama 3.x, SmolLM2, Qwen2/2.5) and their checkpoints, as pure functions.

    model = esawd.models.load("smollm2-135m-instruct")     # the embedded default
    logits = esawd.models.forward(model.config, model.params, token_ids, mask)  # [B, T, V]

`load` takes a preset name (see `PRESETS`), a Hugging Face model directory, a `.gguf` file or
a hub id (downloaded with huggingface_hub when online). Parameters are a plain dict of float32
arrays with per-layer weights stacked under params["layers"]; `config.dtype` is the compute
dtype. `export` writes a Hugging Face directory or a GGUF file that `load`, transformers and
(GGUF) llama.cpp read back.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from esawd.models.config import PRESETS, ModelConfig, check_matches, from_hf_config, to_hf_config
from esawd.models.decoder import (
    Cache,
    cast_params,
    forward,
    hidden_states,
    hidden_states_unrolled,
    init_cache,
    init_params,
    logits_from_hidden,
    param_shapes,
    positions_from_mask,
    unstack_layers,
)
from esawd.models.embedded import cache_dir
from esawd.models.hf import DEFAULT_SHARD_BYTES, EXPORT_DTYPES
from esawd.models.hf import export as _export_hf
from esawd.models.tokenizer import chat_ids, load_tokenizer
from esawd.types import Params

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "EXPORT_DTYPES",
    "EXPORT_FORMATS",
    "PRESETS",
    "Cache",
    "Model",
    "ModelConfig",
    "cache_dir",
    "cast_params",
    "chat_ids",
    "export",
    "forward",
    "from_hf_config",
    "hidden_states",
    "hidden_states_unrolled",
    "init_cache",
    "init_params",
    "load",
    "load_tokenizer",
    "logits_from_hidden",
    "param_shapes",
    "positions_from_mask",
    "to_hf_config",
    "unstack_layers",
]


@dataclasses.dataclass
class Model:
    """A loaded model: static config, float32 parameter pytree (None when loaded without its
    weights), transformers tokenizer."""

    config: ModelConfig
    params: Params | None
    tokenizer: Any
    source: str = ""


def _hub_snapshot(repo_id: str, *, weights: bool = True) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a requirement
        raise ImportError("loading from the hub needs `pip install huggingface_hub`") from e
    patterns = ["*.json", "tokenizer*", "*.model", "*.txt"] + (["*.safetensors"] if weights else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download it elsewhere and pass its local directory to esawd.models.load"
        ) from e


def _load_hf_dir(directory: Path, *, dtype: str, tokenizer: bool, weights: bool = True) -> Model:
    from esawd.models import hf

    config = hf.read_config(directory, dtype=dtype)
    params = hf.load_params(directory, config) if weights else None
    tok = load_tokenizer(directory) if tokenizer else None
    return Model(config, params, tok, str(directory))


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "float32",
    cache: str | os.PathLike | None = None,
    tokenizer: bool = True,
    weights: bool = True,
) -> Model:
    """Load a model by preset name, local HF directory, .gguf file or hub id.

    weights=False reads only the config and the tokenizer (params=None): what a memory plan
    needs before the weights are loaded (a hub id then fetches only those files)."""
    from esawd.models import embedded, gguf_io

    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in PRESETS:
        repo_id, preset = PRESETS[name]
        if name == "smollm2-135m-instruct":
            directory = embedded.converted_dir(cache=cache)
        else:
            directory = _hub_snapshot(repo_id, weights=weights)
        model = _load_hf_dir(directory, dtype=dtype, tokenizer=tokenizer, weights=weights)
        check_matches(preset, model.config, source=f"{directory} (preset {name!r})")
        return model
    if path.is_dir():
        return _load_hf_dir(path, dtype=dtype, tokenizer=tokenizer, weights=weights)
    if path.suffix == ".gguf":
        if weights:
            config, params = gguf_io.load_gguf(path, dtype=dtype)
        else:
            config = gguf_io.read_config(gguf_io._open(path), path=path, dtype=dtype)
            params = None
        tok = load_tokenizer(path.parent, gguf_file=path.name) if tokenizer else None
        return Model(config, params, tok, str(path))
    if path.exists():
        raise ValueError(
            f"{path} is a file but not a .gguf; pass a Hugging Face model directory instead"
        )
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _load_hf_dir(
            _hub_snapshot(name, weights=weights), dtype=dtype, tokenizer=tokenizer, weights=weights
        )
    raise FileNotFoundError(
        f"no model {name!r}: not a preset ({sorted(PRESETS)}), not an existing directory or "
        ".gguf file, and not a hub id of the form 'org/name'"
    )


EXPORT_FORMATS = ("safetensors", "gguf")


def export(
    model: Model,
    path: str | os.PathLike,
    *,
    format: str = "safetensors",
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
    name: str = "",
) -> Path:
    """Write `model` as a Hugging Face directory (format="safetensors": config.json,
    generation_config.json, tokenizer, weights in `dtype`, sharded at `max_shard_bytes`) or as
    one GGUF file (format="gguf", with its tokenizer and chat template); returns the path."""
    from esawd.models import gguf_io

    if format == "safetensors":
        return _export_hf(
            model.config,
            model.params,
            path,
            tokenizer=model.tokenizer,
            dtype=dtype,
            max_shard_bytes=max_shard_bytes,
            progress=progress,
        )
    if format == "gguf":
        return gguf_io.write_gguf(
            model.config,
            model.params,
            path,
            tokenizer=model.tokenizer,
            dtype=dtype,
            name=name,
            progress=progress,
        )
    raise ValueError(f"unknown export format {format!r}; choose one of {list(EXPORT_FORMATS)}")
