"""Hugging Face checkpoints: safetensors shards <-> the stacked parameter pytree.

Reading memory-maps each shard and parses its header here (not through torch), so bfloat16
checkpoints load without torch and a truncated file is reported with the tensor that is cut
off. Writing (`export`) produces a directory that transformers loads as LlamaForCausalLM /
Qwen2ForCausalLM: config.json, generation_config.json, the tokenizer and the weights in float32,
bfloat16 or float16, sharded with an index when they exceed a shard size.
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
    """(HF name, [out, in]-layout array) pairs for every parameter: host views of the
    parameters in their own dtype (float32; float16 under es.precision='reference_float16')."""
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


# The dtypes a checkpoint can be exported in, with their safetensors names.
EXPORT_DTYPES = ("float32", "bfloat16", "float16")
_ST_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DEFAULT_SHARD_BYTES = 2 * 10**9  # "2GB", as transformers' save_pretrained counts it
INDEX_FILE = "model.safetensors.index.json"


def check_export_dtype(dtype: str, *, allowed: tuple[str, ...] = EXPORT_DTYPES) -> np.dtype:
    """The numpy dtype of an export dtype name; a clear error for any other name."""
    import ml_dtypes

    if dtype not in allowed:
        raise ValueError(f"cannot export in dtype {dtype!r}; choose one of {list(allowed)}")
    return np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def cast_tensor(name: str, arr: np.ndarray, dtype: str) -> np.ndarray:
    """`arr` rounded to `dtype` (to nearest even), C-contiguous; refuses non-finite values and
    values that float16 cannot hold, naming the tensor."""
    arr = np.asarray(arr)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"tensor {name!r} has {bad} non-finite values (NaN or inf); the parameters are "
            "broken, export an earlier iteration"
        )
    with np.errstate(over="ignore"):  # float16 overflow is refused below, with the tensor
        out = np.ascontiguousarray(arr.astype(check_export_dtype(dtype)))
    if dtype == "float16" and np.isinf(out).any():
        raise ValueError(
            f"tensor {name!r} has values beyond float16's range (max |x| = "
            f"{float(np.abs(arr).max()):.4g} > 65504); export as bfloat16 or float32"
        )
    return out


def _plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive tensors grouped into shards of at most `max_bytes` each (a tensor larger
    than that gets a shard of its own), as transformers' `save_pretrained` shards."""
    shards: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(sizes):
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    return shards


def _write_safetensors(
    path: Path,
    entries: list[tuple[str, np.ndarray]],
    dtype: str,
    on_bytes: Callable[[int], None],
) -> None:
    """One safetensors file holding `entries` cast to `dtype`, written a tensor at a time (the
    header first, from the shapes), so no more than one converted tensor is in memory."""
    itemsize = check_export_dtype(dtype).itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, arr in entries:
        size = int(np.prod(arr.shape, dtype=np.int64)) * itemsize
        header[name] = {
            "dtype": _ST_DTYPE[dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, arr in entries:
            data = cast_tensor(name, arr, dtype)
            f.write(data.reshape(-1).view(np.uint8))  # its bytes, without another copy
            on_bytes(data.nbytes)
        f.flush()
        os.fsync(f.fileno())


def _is_weight_file(name: str) -> bool:
    """A file an earlier export may have left: model.safetensors, its shards, its index."""
    return name in ("model.safetensors", INDEX_FILE) or (
        name.startswith("model-") and name.endswith(".safetensors") and "-of-" in name
    )


def generation_config(config: ModelConfig) -> dict[str, Any]:
    """generation_config.json for `config`: its BOS and its stop tokens (all of config.eos_ids,
    which transformers and vLLM stop at)."""
    out: dict[str, Any] = {}
    if config.bos_id is not None:
        out["bos_token_id"] = config.bos_id
    if config.eos_ids:
        out["eos_token_id"] = list(config.eos_ids) if len(config.eos_ids) > 1 else config.eos_ids[0]
    return out


def export(
    config: ModelConfig,
    params: Params,
    directory: str | os.PathLike,
    *,
    tokenizer: Any = None,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
) -> Path:
    """Write a Hugging Face directory that transformers and `load` read; returns the directory.

    config.json, generation_config.json (BOS and stop tokens), the tokenizer files, and the
    weights in `dtype` (float32, bfloat16 or float16; any input dtype is rounded to it):
    `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` of at most
    `max_shard_bytes` each with `model.safetensors.index.json` when they do not fit in one.
    """
    from tqdm import tqdm

    check_export_dtype(dtype)
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes={max_shard_bytes} must be positive (default 2 GB)")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; give a directory to export into")
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = to_hf_config(config)  # refuses what config.json cannot express, before writing
    hf_config["torch_dtype"] = dtype

    entries = list(hf_tensors(config, params))  # views of the parameters: nothing copied yet
    itemsize = check_export_dtype(dtype).itemsize
    sizes = [int(np.prod(arr.shape, dtype=np.int64)) * itemsize for _, arr in entries]
    shards = _plan_shards(sizes, max_shard_bytes)
    n = len(shards)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    bar = tqdm(
        total=sum(sizes),
        unit="B",
        unit_scale=True,
        desc=f"safetensors {dtype}",
        disable=not progress,
    )
    tmps = []
    try:
        for name, shard in zip(names, shards, strict=True):
            tmp = directory / f".{name}.tmp"
            tmps.append(tmp)
            _write_safetensors(tmp, [entries[i] for i in shard], dtype, bar.update)
        # An earlier export's weights go first, so that no stale shard is ever read with these.
        for old in directory.iterdir():
            if _is_weight_file(old.name):
                old.unlink()
        # Rename last so an interrupted export never leaves a truncated shard behind.
        for tmp, name in zip(tmps, names, strict=True):
            os.replace(tmp, directory / name)
    finally:
        bar.close()
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    if n > 1:
        weight_map = {
            entries[i][0]: name for name, shard in zip(names, shards, strict=True) for i in shard
        }
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = generation_config(config)
    if generation:
        text = json.dumps(generation, indent=2) + "\n"
        (directory / "generation_config.json").write_text(text)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
