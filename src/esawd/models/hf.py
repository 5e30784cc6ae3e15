"""Hugging Face checkpoints: safetensors shards <-> the stacked parameter pytree.

Reading memory-maps each shard and parses its header here (not through torch), so bfloat16
checkpoints load without torch and a truncated file is reported with the tensor that is cut
off. Writing produces a `model.safetensors` + `config.json` that transformers loads as
LlamaForCausalLM / Qwen2ForCausalLM.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from esawd.models.config import ModelConfig, from_hf_config, to_hf_config
from esawd.types import Params

# (HF name inside "model.layers.{i}.", our path under params["layers"], transpose?)
LAYER_MAP: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("input_layernorm.weight", ("attn_norm", "scale"), False),
    ("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), True),
    ("self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), True),
    ("self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), True),
    ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), True),
    ("post_attention_layernorm.weight", ("mlp_norm", "scale"), False),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), True),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), True),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), True),
)
BIAS_MAP: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("self_attn.q_proj.bias", ("attn", "q_proj", "bias"), False),
    ("self_attn.k_proj.bias", ("attn", "k_proj", "bias"), False),
    ("self_attn.v_proj.bias", ("attn", "v_proj", "bias"), False),
)
# (HF name, our path at the top level, transpose?)
TOP_MAP: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("model.embed_tokens.weight", ("embed", "embedding"), False),
    ("model.norm.weight", ("norm", "scale"), False),
)
HEAD = ("lm_head.weight", ("lm_head", "kernel"), True)

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 by a 16-bit shift below
    "F64": np.float64,
}


def _layer_entries(config: ModelConfig):
    return LAYER_MAP + (BIAS_MAP if config.qkv_bias else ())


class SafetensorsIndex:
    """Memory-mapped tensors of one or more safetensors files, looked up by name."""

    def __init__(self, files: list[Path]):
        self.entries: dict[str, tuple[Path, dict[str, Any], int]] = {}
        self._maps: dict[Path, np.memmap] = {}
        for path in files:
            header, data_start = _read_header(path)
            size = path.stat().st_size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                if data_start + end > size:
                    raise ValueError(
                        f"{path} is truncated: tensor {name!r} needs bytes up to "
                        f"{data_start + end} but the file has {size}; download it again"
                    )
                self.entries[name] = (path, info, data_start)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> np.ndarray:
        """The tensor `name` as a float32 array (copied out of the memory map)."""
        if name not in self.entries:
            files = sorted({str(p) for p, _, _ in self.entries.values()})
            raise KeyError(f"tensor {name!r} is missing from the checkpoint files {files}")
        path, info, data_start = self.entries[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(
                f"tensor {name!r} in {path} has unsupported dtype {info['dtype']}; "
                f"supported: {sorted(_DTYPES)}"
            )
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        raw = self._maps[path][data_start + begin : data_start + end]
        arr = raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32)


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path} is truncated or not a safetensors file (size < 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            blob = f.read(n)
    except OSError as e:
        raise FileNotFoundError(f"cannot read checkpoint file {path}: {e}") from e
    if len(blob) < n:
        raise ValueError(f"{path} is truncated: its header says {n} bytes, found {len(blob)}")
    try:
        return json.loads(blob), 8 + n
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a valid safetensors file (bad JSON header: {e})") from e


def _shard_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index} are missing: {missing}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors files in {directory}; expected a Hugging Face model directory "
            "with config.json and model*.safetensors"
        )
    return files


def read_config(directory: str | os.PathLike, *, dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a Hugging Face model directory (from its config.json), with the stop
    tokens of its generation_config.json added when it has one."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; a Hugging Face model directory needs one")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    try:
        config = from_hf_config(raw, dtype=dtype)
    except KeyError as e:
        raise ValueError(f"{path} lacks the field {e.args[0]!r}") from e
    extra = [i for i in generation_eos_ids(directory) if i not in config.eos_ids]
    return config.replace(eos_ids=config.eos_ids + tuple(extra)) if extra else config


def generation_eos_ids(directory: str | os.PathLike) -> tuple[int, ...]:
    """`eos_token_id` (an int or a list) of the directory's generation_config.json, () without
    one. Generation stops there: Qwen2.5-Instruct's config.json names only <|im_end|>, its
    generation_config.json also <|endoftext|>, and vLLM and transformers stop at both."""
    path = Path(directory) / "generation_config.json"
    if not path.exists():
        return ()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path} is not a JSON object: {e}") from e
    if eos is None:
        return ()
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: eos_token_id={eos!r} is not an int or a list of ints")
    return tuple(ids)


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _check_shape(name: str, got: tuple, want: tuple, source: str) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(
            f"tensor {name!r} in {source} has shape {tuple(got)}, but the config implies "
            f"{tuple(want)}; the checkpoint and its config.json disagree"
        )


def assemble(
    config: ModelConfig,
    get: Callable[[str], np.ndarray],
    has: Callable[[str], bool],
    *,
    source: str,
) -> Params:
    """Build the stacked float32 param tree from HF-named tensors given by `get(name)`."""
    from esawd.models.decoder import param_shapes

    shapes = param_shapes(config)
    params: dict[str, Any] = {}

    def lookup(path):
        node = shapes
        for key in path:
            node = node[key]
        return node

    for name, path, transpose in TOP_MAP + ((HEAD,) if not config.tie_embeddings else ()):
        arr = get(name)
        arr = arr.T if transpose else arr
        _check_shape(name, arr.shape, lookup(path), source)
        _set(params, path, np.ascontiguousarray(arr, np.float32))
    if config.tie_embeddings and has(HEAD[0]):
        # Some tied checkpoints still store lm_head; it must equal the embedding to be ignored.
        head = get(HEAD[0])
        if not np.array_equal(head, params["embed"]["embedding"]):
            raise ValueError(
                f"{source} has tie_word_embeddings=true but an lm_head.weight that differs from "
                "the embedding; set tie_word_embeddings=false in config.json"
            )
    for suffix, path, transpose in _layer_entries(config):
        want = lookup(("layers",) + path)  # [L, ...]
        stacked = np.empty(want, np.float32)
        for i in range(config.n_layers):
            name = f"model.layers.{i}.{suffix}"
            arr = get(name)
            arr = arr.T if transpose else arr
            _check_shape(name, arr.shape, want[1:], source)
            stacked[i] = arr
        _set(params, ("layers",) + path, stacked)
    extra = f"model.layers.{config.n_layers}.{LAYER_MAP[0][0]}"
    if has(extra):
        raise ValueError(
            f"{source} has more layers than num_hidden_layers={config.n_layers} ({extra!r} exists)"
        )
    return params


def load_params(directory: str | os.PathLike, config: ModelConfig) -> Params:
    """Float32 params for `config` from the safetensors shards in a model directory."""
    directory = Path(directory)
    index = SafetensorsIndex(_shard_files(directory))
    return assemble(config, index.get, index.__contains__, source=str(directory))


def hf_tensors(config: ModelConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, [out, in]-layout float32 array) pairs for every parameter."""
    import jax

    params = jax.tree.map(np.asarray, params)

    def get(path):
        node = params
        for key in path:
            node = node[key]
        return node

    for name, path, transpose in TOP_MAP + ((HEAD,) if not config.tie_embeddings else ()):
        arr = get(path)
        yield name, (arr.T if transpose else arr)
    for suffix, path, transpose in _layer_entries(config):
        stacked = get(("layers",) + path)
        for i in range(config.n_layers):
            yield f"model.layers.{i}.{suffix}", (stacked[i].T if transpose else stacked[i])


def export(
    config: ModelConfig, params: Params, directory: str | os.PathLike, *, tokenizer: Any = None
) -> Path:
    """Write config.json + model.safetensors (float32) loadable by transformers; returns the dir."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: np.ascontiguousarray(arr, np.float32) for name, arr in hf_tensors(config, params)
    }
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    # Rename last so an interrupted export never leaves a truncated model.safetensors behind.
    os.replace(tmp, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(to_hf_config(config), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
