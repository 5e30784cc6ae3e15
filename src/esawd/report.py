"""The end of a run in one table and one figure: base vs tuned held-out accuracy with its 95 %
interval, training reward, weight drift, KL(base || tuned) on a task not trained on, wall time
and where the tuned model went. Built from the run directory's files alone, so it can be
rebuilt at any time:

    from esawd import report
    summary = report.write_summary("runs/default")   # summary.json + summary.png
    print(report.format_summary(summary))

The trainer writes it at the end of every run (`log.summary`). The accuracy change is paired:
the same held-out examples are scored at the first and the last evaluation, and the interval
is Newcombe's for paired proportions (`esawd.analysis.stats`).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

from esawd.analysis import forgetting, stats
from esawd.rundir import read_jsonl, replace_file

SUMMARY_FILE = "summary.json"
FIGURE_FILE = "summary.png"


def _eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "eval/accuracy" in r]


def summarize(workdir: str | Path) -> dict[str, Any]:
    """The summary of the run at `workdir` from its config.json and metrics.jsonl."""
    root = Path(workdir)
    config = forgetting.read_run_config(root)
    rows = sorted(read_jsonl(root / "metrics.jsonl"), key=lambda r: r["iteration"])
    if not rows:
        raise FileNotFoundError(f"{root}/metrics.jsonl has no rows yet; has the run started?")
    train = [r for r in rows if "reward_mean" in r]
    evals = _eval_rows(rows)
    out: dict[str, Any] = {
        "run": forgetting.run_label(config),
        "task": config.get("task", {}).get("name", ""),
        "iterations": rows[-1]["iteration"],
    }
    if train:
        k = min(3, len(train))
        out["training_reward"] = {
            "first": float(np.mean([r["reward_mean"] for r in train[:k]])),
            "last": float(np.mean([r["reward_mean"] for r in train[-k:]])),
            "window": k,
        }
    if len(evals) >= 1:
        first, last = evals[0], evals[-1]
        acc = {"base_iteration": first["iteration"], "tuned_iteration": last["iteration"]}
        if "eval/correct" in first and "eval/correct" in last:
            acc |= stats.paired_difference(first["eval/correct"], last["eval/correct"])
        else:  # rows written before per-example results were logged
            acc |= {"before": first["eval/accuracy"], "after": last["eval/accuracy"]}
        out["accuracy"] = acc
        drift = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("drift/")}
        if drift:
            out["drift"] = drift
        kl = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("kl/")}
        if kl:
            out["kl"] = kl
    out["seconds"] = {
        # every measured phase: iterations (with their evaluations) and the first evaluation
        "training": float(sum(r.get("time/iteration", 0.0) for r in rows))
        + float(rows[0].get("time/eval", 0.0) if rows[0]["iteration"] == 0 else 0.0),
        "evaluation": float(sum(r.get("time/eval", 0.0) for r in rows)),
    }
    final = root / "final"
    out["exported"] = str(final) if final.exists() else None
    return out


def write_summary(
    workdir: str | Path, *, session_seconds: float | None = None, machine: str | None = None
) -> dict[str, Any]:
    """Write summary.json and summary.png into the run directory; returns the summary."""
    from esawd import devices, figures  # matplotlib and JAX only when a summary is written

    root = Path(workdir)
    summary = summarize(root)
    if session_seconds is not None:
        summary["seconds"]["session"] = float(session_seconds)
    summary["machine"] = machine or devices.machine()
    summary["date"] = datetime.date.today().isoformat()
    fig = figures.plot_run_summary(figures.load_runs([root])[0], summary)
    fig.savefig(root / FIGURE_FILE, dpi=120)
    figures.plt.close(fig)
    summary["figure"] = str(root / FIGURE_FILE)
    replace_file(root / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a short plain-text table for the terminal."""
    lines = [f"{summary['run']} on {summary['task']}, {summary['iterations']} iterations"]
    rows: list[tuple[str, str]] = []
    acc = summary.get("accuracy")
    if acc:
        if "n" in acc:
            lo, hi = acc["before_ci"]
            rows.append(
                (
                    f"held-out accuracy, t={acc['base_iteration']}",
                    f"{_pct(acc['before'])}  [{_pct(lo)}, {_pct(hi)}]  of {acc['n']}",
                )
            )
            lo, hi = acc["after_ci"]
            rows.append(
                (
                    f"held-out accuracy, t={acc['tuned_iteration']}",
                    f"{_pct(acc['after'])}  [{_pct(lo)}, {_pct(hi)}]",
                )
            )
            lo, hi = acc["diff_ci"]
            verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
            rows.append(
                (
                    "change (paired, 95 % CI)",
                    f"{100 * acc['diff']:+.1f} points  [{100 * lo:+.1f}, {100 * hi:+.1f}]  "
                    f"({verdict}; {acc['gained']} gained, {acc['lost']} lost, "
                    f"McNemar p = {acc['p_mcnemar']:.2g})",
                )
            )
        else:
            rows.append(("held-out accuracy", f"{_pct(acc['before'])} -> {_pct(acc['after'])}"))
    reward = summary.get("training_reward")
    if reward:
        rows.append(
            (
                f"training reward (mean of {reward['window']} iterations)",
                f"{reward['first']:.3f} -> {reward['last']:.3f}",
            )
        )
    drift = summary.get("drift")
    if drift:
        rows.append(
            (
                "weight drift ||theta_T - theta_0||",
                f"{drift['frobenius']:.3g}  ({drift['relative']:.2e} of ||theta_0||)",
            )
        )
    for task, value in (summary.get("kl") or {}).items():
        rows.append((f"KL(base || tuned) on {task}", f"{value:.2e} nats/token"))
    sec = summary["seconds"]
    timing = f"{sec['training'] / 60:.1f} min (evaluation {sec['evaluation'] / 60:.1f} min)"
    if "session" in sec:
        timing += f"; this session {sec['session'] / 60:.1f} min"
    rows.append(("wall time", timing))
    if summary.get("machine"):
        rows.append(("machine", summary["machine"]))
    rows.append(("tuned model", summary.get("exported") or "not exported (export=False)"))
    if summary.get("figure"):
        rows.append(("figure", summary["figure"]))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
