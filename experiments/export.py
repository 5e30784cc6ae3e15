"""Export a run's tuned model theta_T as a Hugging Face directory or a GGUF file.

    python -m experiments.export --workdir runs/default --format safetensors --dtype bfloat16 \\
        --out exports/default-bf16 [--iteration 12] [--max_shard_size 2GB] \\
        [--push_to_hub user/smollm2-rules]
    python -m experiments.export --workdir runs/default --format gguf --dtype float16 \\
        --out exports/default-f16.gguf

theta_T is the checkpoint at iteration T where there is one, else it is replayed from the ES
log (`esawd.analysis.thetas.Thetas`, bitwise what training had); T defaults to the last
iteration available. The architecture, the tokenizer and theta_0 come from the run: the model
its config.json names, the anchor in its anchor/. safetensors: config.json,
generation_config.json, the tokenizer files and the weights in --dtype, sharded at
--max_shard_size with model.safetensors.index.json. gguf: one file for llama.cpp-based tools,
with the tokenizer and chat template (matrices in --dtype, norms and biases float32).
--push_to_hub uploads the result to a Hugging Face model repository (created if missing).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jax
import numpy as np

from esawd import models
from esawd.analysis.forgetting import read_run_config, run_method
from esawd.analysis.thetas import Thetas, format_ranges
from esawd.models.gguf_io import GGUF_DTYPES
from esawd.rundir import RunDir

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30


class ExportError(ValueError):
    """A run directory or an option the export refuses, with the fix in the message."""


def parse_size(text: str) -> int:
    """Bytes of '2GB', '500MB', '1.5GiB' or '123456' (GB = 10^9 bytes, as transformers)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; use e.g. 2GB, 500MB, 1.5GiB or a number of bytes"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def run_model(
    workdir: str | Path,
    *,
    iteration: int | None = None,
    cache_dir: str | None = None,
    log=print,
) -> tuple[models.Model, int]:
    """(the run's model with theta_T as host arrays, T): T = `iteration`, default the last
    available; theta_T from the checkpoint at T, else replayed from the ES log."""
    root = Path(workdir)
    if not root.is_dir():
        raise ExportError(
            f"no run directory {root}; pass the --config.workdir of an experiments.run job"
        )
    config = read_run_config(root)
    run = RunDir(root, max_to_keep=None)
    try:
        model, params, t = _theta_T(run, config, iteration=iteration, cache_dir=cache_dir, log=log)
    finally:
        run.close()
    return models.Model(model.config, params, model.tokenizer, str(root)), t


def _theta_T(run: RunDir, config: dict, *, iteration, cache_dir, log):
    """(the run's model without parameters, theta_T as host arrays, T)."""
    if not run.has_anchor():
        raise ExportError(f"{run.root} has no anchor/ (theta_0); was the run started?")
    m = config["model"]
    log(f"export: loading {m['name']} (the model of {run.root})")
    model = models.load(
        m["name"],
        dtype=m.get("compute_dtype", "float32"),
        cache=cache_dir or m.get("cache_dir") or None,
    )
    # es.precision="reference_float16" keeps theta (and the anchor) in float16 from theta_0 on
    masters = "float16" if config.get("es", {}).get("precision") == "reference_float16" else None
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, masters or x.dtype), model.params)
    model.params = None  # theta_0 comes from the anchor; free the loaded copy first
    theta0 = jax.device_put(run.restore_anchor_numpy(like))
    # a run anchored to another model (awd.anchor) starts from its start/ parameters
    start = jax.device_put(run.restore_start_numpy(like)) if run.has_start() else None
    thetas = Thetas(run, theta0, method=run_method(config), start=start)
    available = thetas.available()
    t = available[-1] if iteration is None else int(iteration)
    if t not in available:
        raise ExportError(
            f"iteration {t} cannot be exported from {run.root}: it has theta_0, checkpoints or "
            f"ES-log rows for iterations {format_ranges(available)}; pass --iteration with one "
            "of them"
        )
    how = "checkpoint" if t in thetas.steps else "replayed from the ES log"
    how = "the parameters the run started from" if t == 0 else how
    log(f"export: theta_{t} ({how}; iterations available: {format_ranges(available)})")
    return model, jax.tree.map(np.asarray, thetas.get(t)), t


def push_to_hub(path: str | Path, repo_id: str, *, private: bool = False, message: str = "") -> str:
    """Upload an exported directory (or GGUF file) to the hub model repo `repo_id`, created
    when missing; returns what the hub answered (the commit URL)."""
    from huggingface_hub import HfApi

    path = Path(path)
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
    message = message or f"Upload {path.name} (esawd export)"
    if path.is_dir():
        info = api.upload_folder(folder_path=str(path), repo_id=repo_id, commit_message=message)
    else:
        info = api.upload_file(
            path_or_fileobj=str(path),
            path_in_repo=path.name,
            repo_id=repo_id,
            commit_message=message,
        )
    return str(getattr(info, "commit_url", info))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="the run directory")
    p.add_argument("--iteration", type=int, help="T (default: the last iteration available)")
    p.add_argument("--format", choices=models.EXPORT_FORMATS, default="safetensors")
    p.add_argument("--dtype", choices=models.EXPORT_DTYPES, default="float32")
    p.add_argument(
        "--out", required=True, help="the directory (safetensors) or .gguf file to write"
    )
    p.add_argument(
        "--max_shard_size",
        type=parse_size,
        default=models.DEFAULT_SHARD_BYTES,
        help="safetensors: the largest shard, e.g. 2GB (default), 500MB",
    )
    p.add_argument("--push_to_hub", metavar="REPO", help="upload to this hub repo, e.g. me/name")
    p.add_argument("--private", action="store_true", help="with --push_to_hub: a private repo")
    p.add_argument("--model_cache_dir", default="", help="where the run's base model is cached")
    p.add_argument("--no_progress", action="store_true")
    return p


def check_out(out: Path, fmt: str, dtype: str) -> None:
    """Refuse an --out or --dtype the format cannot take, before anything is loaded."""
    if fmt == "gguf" and dtype not in GGUF_DTYPES:
        raise ExportError(
            f"--format gguf cannot store --dtype {dtype}; choose one of {GGUF_DTYPES}"
        )
    if fmt == "gguf" and out.is_dir():
        raise ExportError(
            f"--out {out} is a directory; --format gguf writes one file, e.g. model.gguf"
        )
    if fmt == "safetensors" and out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; --format safetensors writes a directory")


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    out = Path(args.out)
    try:
        check_out(out, args.format, args.dtype)
        model, t = run_model(
            args.workdir, iteration=args.iteration, cache_dir=args.model_cache_dir or None
        )
        name = f"{Path(args.workdir).resolve().name} (esawd, iteration {t})"
        print(f"export: writing {args.format} {args.dtype} to {out}", flush=True)
        out = models.export(
            model,
            out,
            format=args.format,
            dtype=args.dtype,
            max_shard_bytes=args.max_shard_size,
            progress=not args.no_progress,
            name=name,
        )
        print(f"export: wrote {out}")
        if args.push_to_hub:
            print(f"export: uploading {out} to {args.push_to_hub}", flush=True)
            url = push_to_hub(out, args.push_to_hub, private=args.private)
            print(f"export: uploaded ({url})")
    except (ValueError, OSError) as e:  # ExportError, AnalysisError, missing files, the hub
        sys.exit(f"export: {e}")
    return out


if __name__ == "__main__":
    main()
