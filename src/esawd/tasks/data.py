"""Reading benchmark rows in the formats in which they are published.

Three sources, chosen by `Task.load(split, data_dir, source=...)`:

- local: a data directory holding `<task>/<files>`: the verl-style parquet files the reference
  (`kschweig/es-awd`, `tasks/<task>/*.parquet`, `prior_tasks/<task>/*.parquet`) ships, hub-style
  parquet shards (`<split>-00000-of-00001.parquet`), JSON lists or JSON lines.
- hub: Hugging Face `datasets.load_dataset` (optional dependency, needs the network).
- tfds: TensorFlow Datasets for the catalog datasets it has (optional dependency).

Rows come back as plain dicts in file order; each task turns them into examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def find_split_files(task_dir: Path, split: str, *, extra_names: Sequence[str] = ()) -> list[Path]:
    """The files that hold `split` in `task_dir`, in shard order; empty if there are none."""
    patterns = [
        f"{split}.parquet",
        f"{split}-*.parquet",
        f"data/{split}-*.parquet",
        f"{split}.jsonl",
        f"{split}.json",
        *extra_names,
    ]
    for pattern in patterns:
        files = sorted(task_dir.glob(pattern))
        if files:
            return files
    return []


def resolve_task_dir(data_dir: str | Path, name: str) -> Path:
    """`data_dir/name` if it exists, else `data_dir` itself (a folder of one task's files)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data_dir {str(root)!r} is not a directory; pass the folder that contains "
            f"'{name}/' (for example ../shared/data), or source='hub'."
        )
    task_dir = root / name
    return task_dir if task_dir.is_dir() else root


def read_rows(path: Path) -> list[Row]:
    """All rows of one parquet, JSON-list or JSON-lines file, in file order."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:  # pragma: no cover - pyarrow is a runtime requirement
            raise ImportError("Reading parquet files needs pyarrow: pip install pyarrow") from err
        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        with path.open(encoding="utf-8") as f:
            rows = json.load(f)
        if not isinstance(rows, list):
            raise ValueError(f"{path} holds a JSON {type(rows).__name__}; expected a list of rows")
        return rows
    raise ValueError(f"Cannot read {path}: expected .parquet, .json or .jsonl")


def hub_rows(path: str, config: str | None, split: str) -> list[Row]:
    """Rows of a Hugging Face hub dataset split, through `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"Loading {path} from the Hugging Face hub needs the `datasets` package "
            "(pip install 'esawd[hub]' or pip install datasets); or pass data_dir= to read "
            "local files."
        ) from err
    args = (path, config) if config else (path,)
    return [dict(row) for row in datasets.load_dataset(*args, split=split)]


def _to_python(value: Any) -> Any:
    """numpy scalars/arrays and bytes (as TFDS yields them) to plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _to_python(value.tolist())
    if isinstance(value, list | tuple):
        return [_to_python(v) for v in value]
    return value


def tfds_rows(name: str, split: str, data_dir: str | Path | None) -> list[Row]:
    """Rows of a TensorFlow Datasets split, decoded to plain Python values."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"Loading {name} from TensorFlow Datasets needs tensorflow-datasets and tensorflow "
            "(pip install 'esawd[tfds]'); or pass data_dir= to read local files."
        ) from err
    kwargs = {"data_dir": str(data_dir)} if data_dir is not None else {}
    dataset = tfds.load(name, split=split, **kwargs)
    return [_to_python(row) for row in tfds.as_numpy(dataset)]
