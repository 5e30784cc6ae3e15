"""Continual fine-tuning: train a sequence of stages with one command, or summarise sequences.

    python -m experiments.continual --config configs/continual.py:awd_deployed \\
        [--config.workdir=DIR] [--config.continual.stages=rules:12,arithmetic:12]
    python -m experiments.continual --summary DIR [DIR ...] [--out FOLDER]

The first form runs (or resumes) every stage and writes DIR/continual.json; the second prints
the Markdown table of several sequences (ACC, BWT, FWT; `esawd.continual`) and, with --out,
writes continual.md and continual.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from esawd import continual, settings

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_SUMMARY = flags.DEFINE_multi_string("summary", [], "sequence directories to summarise")
_OUT = flags.DEFINE_string("out", "", "folder for continual.md and continual.png")


def summarize(dirs: list[str], out: str) -> str:
    """The table of finished sequences (their continual.json), and the figure when `out`."""
    summaries = []
    for d in dirs:
        path = Path(d) / continual.SUMMARY_FILE
        if not path.exists():
            sys.exit(f"{path} does not exist: run the sequence first (--config ...).")
        summaries.append(json.loads(path.read_text()))
    table = continual.format_table(summaries)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "continual.md").write_text(table + "\n")
        continual.plot_continual(summaries).savefig(Path(out) / "continual.png", dpi=120,
                                                   bbox_inches="tight")  # fmt: skip
    return table


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)
    if _SUMMARY.value or len(argv) > 1:
        print(summarize([*_SUMMARY.value, *argv[1:]], _OUT.value))
        return
    if _CONFIG.value is None:
        sys.exit("pass --config configs/continual.py:<arm> or --summary DIR [DIR ...]")
    c = _CONFIG.value.to_dict()
    seq = c.pop("continual", None)
    if seq is None:
        sys.exit(
            "the config has no `continual` section (stages, anchor, ...): see configs/continual.py"
        )
    try:
        summary = continual.run_sequence(
            c, stages=seq["stages"], anchor=seq["anchor"],
            eval_tasks=[t for t in seq["eval_tasks"].split(",") if t],
            eval_examples=seq["eval_examples"], eval_max_new_tokens=seq["eval_max_new_tokens"],
            label=seq.get("label", ""),
        )  # fmt: skip
    except (settings.ConfigError, ValueError) as e:
        sys.exit(f"config error: {e}")
    print(continual.format_table([summary]))


if __name__ == "__main__":
    app.run(main)
