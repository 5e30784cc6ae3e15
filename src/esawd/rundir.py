"""The run directory: config, metrics, the ES log, Orbax checkpoints and the anchor.

    RUN/
      config.json           the full config of the run
      metrics.jsonl         one JSON object per iteration (and per evaluation), `iteration` field
      es_log.jsonl          per iteration: the member seeds and their coefficients (for replay)
      anchor/               theta_0, written once with Orbax, restored into pinned host memory
      start/                the parameters the run starts from, only when awd.anchor names
                            another model than the one the run starts from
      checkpoints/<t>/      Orbax checkpoints: parameters + {iteration, es_seed}
      tensorboard/          TensorBoard event files
      final/                the tuned model as a Hugging Face directory (safetensors)
      forgetting.jsonl, kl.jsonl, weight_drift.jsonl, kl_samples/, evaluate.json
                            written by `python -m experiments.evaluate` (esawd.analysis)

Crash safety. Orbax finalises a checkpoint by renaming its temporary directory, so a
checkpoint that was being written when the process died is never listed. With `async_save`,
`save` returns once the arrays are copied to host memory and the write, rename included, goes
on in the background; reading the checkpoints, the next save and `close` wait for it first.
JSONL rows past the restored checkpoint are dropped on resume, because those iterations are run
again. Files that are rewritten rather than appended (config.json, a truncated JSONL log) go to
a temporary file that is flushed and fsynced before `os.replace` puts it in place, and the
directory is fsynced after, so a crash leaves either the old file or the new one, never an
empty or partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from esawd.types import Params


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, jax.Array)) and np.ndim(x) == 0:
        return np.asarray(x).item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    return x


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete rows of a JSONL file (a torn last line, from a crash, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def replace_file(path: str | os.PathLike, text: str) -> None:
    """Replace `path` by `text` atomically and durably: write, fsync, rename, fsync the dir."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename is durable once the directory entry is on disk. Some platforms and file
    # systems cannot open or fsync a directory; the file's own contents are safe by now.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _abstract(tree: Any) -> Any:
    """Shape/dtype/sharding targets for an Orbax restore (numpy leaves: the first device)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", default)),
        tree,
    )


class JsonlLog:
    """An append-only JSONL file whose rows carry an `iteration` field."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to disk."""
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row."""
        return read_jsonl(self.path)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows of iterations after `iteration` (they are about to be run again)."""
        keep = [r for r in self.rows() if r.get("iteration", 0) <= iteration]
        replace_file(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())


def stored_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json of the run at `workdir`, or None; reads without creating anything."""
    path = Path(workdir).expanduser() / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


class RunDir:
    """Paths and persistent state of one run directory.

    With `async_save`, checkpoints are written by a background thread: `save` returns once
    Orbax has copied the arrays off the devices (so the caller may donate them right after).
    """

    def __init__(
        self, workdir: str | os.PathLike, *, max_to_keep: int | None = 3, async_save: bool = False
    ):
        self.root = Path(workdir).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.async_save = async_save
        self.metrics = JsonlLog(self.root / "metrics.jsonl")
        self.es_log = JsonlLog(self.root / "es_log.jsonl")
        self._manager = ocp.CheckpointManager(
            self.root / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    # ----- config --------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def read_config(self) -> dict[str, Any] | None:
        """The stored config, or None for a new run directory."""
        return stored_config(self.root)

    def write_config(self, config: dict[str, Any]) -> None:
        """Store the run's config (atomically)."""
        replace_file(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    # ----- anchor and start ----------------------------------------------------------------
    # anchor/ is theta_0 of the AWD step, the drift and the KL: the model the run starts from,
    # or another one (`awd.anchor`, continual fine-tuning); then start/ holds the parameters
    # the run starts from, which replay needs. Both are written once.

    @property
    def anchor_path(self) -> Path:
        return self.root / "anchor"

    @property
    def start_path(self) -> Path:
        return self.root / "start"

    def has_anchor(self) -> bool:
        return self._has(self.anchor_path)

    def has_start(self) -> bool:
        """Whether the run starts from other parameters than its anchor (`awd.anchor`)."""
        return self._has(self.start_path)

    @staticmethod
    def _has(path: Path) -> bool:
        return (path / "_CHECKPOINT_METADATA").exists() or (path.exists() and any(path.iterdir()))

    def save_anchor(self, params: Params) -> None:
        """Write theta_0 once (Orbax; an existing anchor is never overwritten)."""
        self._save_once(self.anchor_path, params)

    def save_start(self, params: Params) -> None:
        """Write the parameters the run starts from, when they differ from its anchor."""
        self._save_once(self.start_path, params)

    @staticmethod
    def _save_once(path: Path, params: Params) -> None:
        if path.exists():
            raise FileExistsError(f"{path} exists; it is written only once.")
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, params)

    def restore_anchor_numpy(self, like: Params) -> Params:
        """theta_0 from disk as host numpy arrays shaped like `like`."""
        return self._restore_numpy(self.anchor_path, like)

    def restore_start_numpy(self, like: Params) -> Params:
        """The parameters the run started from: start/ when written, else the anchor."""
        return self._restore_numpy(self.start_path if self.has_start() else self.anchor_path, like)

    @staticmethod
    def _restore_numpy(path: Path, like: Params) -> Params:
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), like)
        with ocp.PyTreeCheckpointer() as ckptr:
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), like)
            return ckptr.restore(path, item=abstract, restore_args=restore_args)

    # ----- checkpoints ---------------------------------------------------------------------

    # With async_save, Orbax lists a step as soon as its save has started, so the listings wait
    # for a pending save (and re-raise its error) first. Orbax itself waits in restore
    # (AsyncCheckpointer.restore), in the next save and in close (CheckpointManager.save/close).

    def wait(self) -> None:
        """Block until a checkpoint being written in the background is on disk."""
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The iteration of the latest complete checkpoint, or None."""
        self.wait()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The iterations of every complete checkpoint kept."""
        self.wait()
        return list(self._manager.all_steps())

    def save(
        self,
        iteration: int,
        params: Params,
        meta: dict[str, Any],
        *,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A checkpoint of `params` (+ `extra` pytrees, e.g. optimizer state) at `iteration`.

        All items land in one atomic Orbax checkpoint, finished before returning; with
        `async_save`, finished in the background once the arrays are on the host.
        """
        items = {
            "params": ocp.args.StandardSave(params),
            "meta": ocp.args.JsonSave(_jsonable(meta)),
        }
        for name, tree in (extra or {}).items():
            items[name] = ocp.args.StandardSave(tree)
        self._manager.save(iteration, args=ocp.args.Composite(**items), force=True)
        if not self.async_save:
            self.wait()

    def restore(
        self, iteration: int, like: Params, *, extra_like: dict[str, Any] | None = None
    ) -> tuple[Params, dict[str, Any]] | tuple[Params, dict[str, Any], dict[str, Any]]:
        """Parameters (placed like `like`) and metadata of the checkpoint at `iteration`.

        With `extra_like`, also the extra items saved with it, placed like the given trees:
        returns (params, meta, extra).
        """
        items = {
            "params": ocp.args.StandardRestore(_abstract(like)),
            "meta": ocp.args.JsonRestore(),
        }
        for name, tree in (extra_like or {}).items():
            items[name] = ocp.args.StandardRestore(_abstract(tree))
        out = self._manager.restore(iteration, args=ocp.args.Composite(**items))
        if extra_like is None:
            return out["params"], dict(out["meta"])
        return out["params"], dict(out["meta"]), {k: out[k] for k in extra_like}

    def close(self) -> None:
        """Finish a pending checkpoint and release Orbax's threads."""
        self._manager.close()

    @property
    def final_dir(self) -> Path:
        return self.root / "final"
