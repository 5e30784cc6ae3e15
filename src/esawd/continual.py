"""Continual fine-tuning: a sequence of stages, each a resumable run directory, and the
summary continual learning is judged by (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory").

    from esawd import continual
    summary = continual.run_sequence(config, stages="rules:12,arithmetic:12",
                                     anchor="deployed", eval_tasks=(), eval_examples=64)

Stage i trains on its task starting from stage i-1's exported model (`<stage>/final`);
stage 0 from `model.name`. ES + AWD is anchored either to the deployed model (`anchor=
"deployed"`: every stage's `awd.anchor` is stage 0's run directory, i.e. its theta_0) or to
the model the stage starts from (`"previous"`). GRPO stages are chained the same way (its KL
reference is the stage's start). After each stage, every task of the sequence and the
`eval_tasks` are evaluated on the stage's final parameters (`esawd.analysis.analyze_run`,
written into the stage's directory), stage 0 also at iteration 0: the base model.

With R[i, j] the accuracy on task j after stage i and b_j the base model's:

    ACC = mean_j R[T-1, j]                      average accuracy at the end
    BWT = mean_{j<T-1} (R[T-1, j] - R[j, j])    backward transfer (negative: forgetting)
    FWT = mean_{j>0} (R[j-1, j] - b_j)          forward transfer

over the sequence's tasks (T stages, stage j trains task j). Tasks named only in
`eval_tasks` are reported as their change from the base model. `summary.json` in the
sequence's directory holds R, b and these numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from esawd.rundir import read_jsonl, replace_file

ANCHORS = ("deployed", "previous")
SUMMARY_FILE = "continual.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: train `task` for `iterations`, with its own AWD when given."""

    task: str
    iterations: int
    kind: str | None = None  # None: the sequence's awd.kind / awd.lam
    lam: float | None = None


def parse_stages(text: str) -> list[Stage]:
    """'rules:12,arithmetic:12:l2=10' -> stages (task:iterations[:kind=lam])."""
    stages = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        fields = part.split(":")
        bad = ValueError(
            f"stage {part!r} of {text!r}: write task:iterations[:kind=lam], e.g. "
            "'rules:12,arithmetic:12:l2=10'"
        )
        if len(fields) not in (2, 3) or not fields[1].isdigit() or int(fields[1]) < 1:
            raise bad
        kind = lam = None
        if len(fields) == 3:
            kind, sep, value = fields[2].partition("=")
            try:
                lam = float(value) if sep else (0.0 if kind == "none" else None)
            except ValueError:
                raise bad from None
            if lam is None or kind not in ("none", "l1", "l2"):
                raise bad
        stages.append(Stage(fields[0], int(fields[1]), kind, lam))
    if not stages:
        raise ValueError(f"stages={text!r} names no stage; e.g. 'rules:12,arithmetic:12'")
    return stages


def stage_dir(workdir: str | Path, i: int, stage: Stage) -> Path:
    return Path(workdir) / f"stage{i}_{stage.task}"


def stage_config(
    base: Mapping[str, Any], stages: Sequence[Stage], i: int, *, workdir: str, anchor: str
) -> dict[str, Any]:
    """The run config (a plain nested dict of the schema) of stage i of the sequence."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r} is not one of {ANCHORS}.")
    c = json.loads(json.dumps(dict(base)))  # a deep copy of plain values
    stage = stages[i]
    c["workdir"] = str(stage_dir(workdir, i, stage))
    c["task"]["name"] = stage.task
    c["export"] = True  # the next stage starts from <stage>/final
    if i > 0:
        c["model"]["name"] = str(stage_dir(workdir, i - 1, stages[i - 1]) / "final")
    if c.get("method", "es") == "es":
        c["es"]["num_iterations"] = stage.iterations
        if stage.kind is not None:
            c["awd"]["kind"], c["awd"]["lam"] = stage.kind, stage.lam
        if i > 0 and anchor == "deployed":
            c["awd"]["anchor"] = str(stage_dir(workdir, 0, stages[0]))  # its theta_0
    else:
        c["grpo"]["num_steps"] = stage.iterations
    return c


def _final_iteration(root: Path) -> int:
    rows = read_jsonl(root / "metrics.jsonl") if (root / "metrics.jsonl").exists() else []
    return max((int(r["iteration"]) for r in rows), default=0)


def accuracy_matrix(workdir: str | Path, stages: Sequence[Stage], tasks: Sequence[str]):
    """(R [stages][tasks], base [tasks]) from the stages' forgetting.jsonl rows."""
    R, base = [], []
    for i, stage in enumerate(stages):
        root = stage_dir(workdir, i, stage)
        last = _final_iteration(root)
        acc = {(r["iteration"], r["task"]): r["accuracy"] for r in
               read_jsonl(root / "forgetting.jsonl")}  # fmt: skip
        R.append([acc.get((last, t), math.nan) for t in tasks])
        if i == 0:
            base = [acc.get((0, t), math.nan) for t in tasks]
    return R, base


def cl_metrics(R: Sequence[Sequence[float]], base: Sequence[float], num_stages: int) -> dict:
    """ACC, BWT and FWT over the first `num_stages` tasks (stage j trains task j)."""
    T = num_stages
    last = R[T - 1]
    acc = sum(last[:T]) / T
    bwt = sum(last[j] - R[j][j] for j in range(T - 1)) / (T - 1) if T > 1 else math.nan
    fwt = sum(R[j - 1][j] - base[j] for j in range(1, T)) / (T - 1) if T > 1 else math.nan
    return {"acc": acc, "bwt": bwt, "fwt": fwt}


def summarize(
    workdir: str | Path, stages: Sequence[Stage], eval_tasks: Sequence[str], label: str
) -> dict[str, Any]:
    """R, the base accuracies and ACC/BWT/FWT of a finished (or partly run) sequence."""
    seq_tasks = list(dict.fromkeys(s.task for s in stages))
    if len(seq_tasks) != len(stages):
        raise ValueError("a sequence trains each task once; repeat a task in a new sequence.")
    tasks = seq_tasks + [t for t in eval_tasks if t not in seq_tasks]
    R, base = accuracy_matrix(workdir, stages, tasks)
    out = {"label": label, "workdir": str(workdir), "tasks": tasks, "R": R, "base": base,
           "stages": [dataclasses.asdict(s) for s in stages],
           **cl_metrics(R, base, len(stages))}  # fmt: skip
    out["other_tasks_change"] = {t: R[-1][j] - base[j] for j, t in enumerate(tasks)
                                 if t not in seq_tasks}  # fmt: skip
    return out


def run_sequence(
    config: Mapping[str, Any],
    *,
    stages: str | Sequence[Stage],
    anchor: str = "deployed",
    eval_tasks: Sequence[str] = (),
    eval_examples: int = 64,
    eval_max_new_tokens: int | Mapping[str, int] = 64,
    label: str = "",
) -> dict[str, Any]:
    """Train every stage (resuming finished or interrupted ones), evaluate after each, and
    write `continual.json` into the sequence's directory (`config["workdir"]`)."""
    from esawd import analysis, settings
    from esawd.train import train

    stages = parse_stages(stages) if isinstance(stages, str) else list(stages)
    workdir = str(config["workdir"])
    tasks = list(dict.fromkeys([*(s.task for s in stages), *eval_tasks]))
    runs = [stage_config(config, stages, i, workdir=workdir, anchor=anchor)
            for i in range(len(stages))]  # fmt: skip
    for c in runs:  # every stage is checked before the first one trains (its model and
        # anchor are stage outputs that do not exist yet: checked with the base model's)
        early = {**c, "model": dict(config["model"])}
        if "awd" in c:
            early["awd"] = {**c["awd"], "anchor": config["awd"].get("anchor", "")}
        settings.check(settings.from_config(early))
    for i, c in enumerate(runs):
        print(f"stage {i}: {stages[i].task}, {stages[i].iterations} iterations -> {c['workdir']}",
              flush=True)  # fmt: skip
        train(settings.from_config(c))  # the loop checks the settings first
        last = _final_iteration(Path(c["workdir"]))
        a = analysis.AnalysisSettings(
            tasks=tuple(tasks), num_examples=eval_examples, max_new_tokens=eval_max_new_tokens,
            iterations=(0, last) if i == 0 else (last,), kl=False,
            data_dir=c["task"].get("data_dir", ""),
        )  # fmt: skip
        analysis.analyze_run(c["workdir"], a)
    summary = summarize(workdir, stages, eval_tasks, label or Path(workdir).name)
    replace_file(Path(workdir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def format_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: one row per sequence, R's last row, ACC, BWT, FWT (points)."""
    tasks = list(dict.fromkeys(t for s in summaries for t in s["tasks"]))
    head = ["sequence", *[f"{t} (base -> end)" for t in tasks], "ACC", "BWT", "FWT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s["label"]]
        for t in tasks:
            j = s["tasks"].index(t) if t in s["tasks"] else None
            cells.append("-" if j is None else f"{_pct(s['base'][j])} -> {_pct(s['R'][-1][j])}")
        cells += [_pct(s["acc"]), _pct(s["bwt"]), _pct(s["fwt"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_continual(summaries: Sequence[Mapping[str, Any]]):
    """R[stage, task] of each sequence as a heatmap, and ACC / BWT / FWT side by side."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(summaries)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.0 * n + 5, 3.4), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], summaries, strict=False)):
        R = np.array([s["base"], *s["R"]], float) * 100
        im = ax.imshow(R, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(s["tasks"])), s["tasks"], rotation=30, ha="right")
        rows = ["base"] + [f"after {st['task']}" for st in s["stages"]]
        ax.set_yticks(range(len(rows)), rows if k == 0 else [""] * len(rows))  # one set of labels
        for (r, c), v in np.ndenumerate(R):
            ax.text(c, r, "-" if v != v else f"{v:.0f}", ha="center", va="center",
                    color="white" if v < 60 else "black", fontsize=8)  # fmt: skip
        ax.set_title(s["label"], fontsize=9)
    fig.colorbar(im, ax=axes[0][:n], label="accuracy (%)", shrink=0.8)
    ax = axes[0][n]
    width = 0.8 / max(n, 1)
    for k, s in enumerate(summaries):
        vals = [100 * s[m] for m in ("acc", "bwt", "fwt")]
        ax.bar(np.arange(3) + k * width, vals, width, label=s["label"])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(np.arange(3) + width * (n - 1) / 2, ["ACC", "BWT", "FWT"])
    ax.set_ylabel("points")
    ax.legend(fontsize=7)
    return fig
