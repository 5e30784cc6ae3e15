"""The paper's figures from run directories, as matplotlib figures (and PNG files).

    from esawd import figures
    runs = figures.load_runs(["runs/es_n4", "runs/awd_n4"])
    figures.plot_target_vs_prior(runs).savefig("fig1a.png")
    figures.write_figures(["runs/es_n4", "runs/awd_n4"], "figures/")   # every figure

Each plot reads what `python -m experiments.evaluate` wrote into the run directories
(forgetting.jsonl, kl.jsonl, weight_drift.jsonl) and the run's config.json; a figure whose data
no run has is skipped by `write_figures`, with the reason. `experiments/figures.py` is the
command line, `notebooks/` the Colab versions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from esawd import analysis
from esawd.rundir import read_jsonl

MARKERS = "osD^vP*Xh<>p"


# ---------------------------------------------------------------------------------------
# Run data.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What the figures need from one run directory."""

    workdir: Path
    config: dict[str, Any]
    label: str
    forgetting: list[dict[str, Any]]
    kl: list[dict[str, Any]]
    drift: list[dict[str, Any]]
    metrics: list[dict[str, Any]]

    @property
    def method(self) -> str:
        return analysis.run_method(self.config)

    @property
    def target(self) -> str:
        return self.config.get("task", {}).get("name", "")

    @property
    def population_size(self) -> int | None:
        return self.config["es"]["population_size"] if self.method == "es" else None

    @property
    def lam(self) -> float:
        """The AWD strength, 0 without AWD (GRPO: 0)."""
        awd = self.config.get("awd", {})
        return 0.0 if self.method != "es" or awd.get("kind", "none") == "none" else awd["lam"]

    @property
    def tasks(self) -> list[str]:
        """Evaluated tasks, the target first."""
        names = sorted({r["task"] for r in self.forgetting})
        return sorted(names, key=lambda t: t != self.target)

    @property
    def prior_tasks(self) -> list[str]:
        return [t for t in self.tasks if t != self.target]

    def accuracy(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(iterations, accuracy) of one task, by iteration."""
        rows = sorted((r["iteration"], r["accuracy"]) for r in self.forgetting if r["task"] == task)
        return np.array([r[0] for r in rows], int), np.array([r[1] for r in rows], float)

    def target_and_prior(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(iterations, target accuracy, mean prior accuracy) where all were evaluated."""
        table: dict[int, dict[str, float]] = {}
        for r in self.forgetting:
            table.setdefault(r["iteration"], {})[r["task"]] = r["accuracy"]
        need = [self.target, *self.prior_tasks]
        its = sorted(t for t, v in table.items() if all(k in v for k in need))
        target = [table[t][self.target] for t in its]
        prior = [np.mean([table[t][k] for k in self.prior_tasks]) for t in its]
        return np.array(its, int), np.array(target, float), np.array(prior, float)

    def last_drift(self) -> dict[str, Any] | None:
        return max(self.drift, key=lambda r: r["iteration"]) if self.drift else None


def load_runs(workdirs: Sequence[str | Path]) -> list[Run]:
    """The runs at `workdirs`; labels made unique with the folder name where they clash."""
    runs = []
    for w in workdirs:
        root = Path(w)
        config = analysis.read_run_config(root)
        runs.append(
            Run(
                workdir=root,
                config=config,
                label=analysis.run_label(config),
                forgetting=read_jsonl(root / analysis.FORGETTING_FILE),
                kl=read_jsonl(root / analysis.KL_FILE),
                drift=read_jsonl(root / analysis.DRIFT_FILE),
                metrics=read_jsonl(root / "metrics.jsonl"),
            )
        )
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:
            r.label = f"{r.label} ({r.workdir.name})"
    return runs


def _ordered_union(lists: Sequence[Sequence[str]]) -> list[str]:
    """Every name of the lists, once, in order of first appearance."""
    out: list[str] = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out


def _nice(task: str) -> str:
    return {"arc_challenge": "ARC-Challenge", "mmlu_pro": "MMLU-Pro", "gsm8k": "GSM8K"}.get(
        task, task.capitalize().replace("Piqa", "PIQA").replace("Proofwriter", "ProofWriter")
    )


# ---------------------------------------------------------------------------------------
# The figures.
# ---------------------------------------------------------------------------------------


def plot_target_vs_prior(runs: Sequence[Run]) -> plt.Figure:
    """Figure 1a: target-task accuracy vs mean prior-task accuracy, coloured by iteration."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    data = [(r, *r.target_and_prior()) for r in runs]
    last = max((its.max() for _, its, _, _ in data if len(its)), default=1)
    norm = matplotlib.colors.Normalize(0, max(last, 1))
    for i, (run, its, target, prior) in enumerate(data):
        if not len(its):
            continue
        marker = MARKERS[i % len(MARKERS)]
        ax.plot(target, prior, color="0.7", lw=1, zorder=1)
        ax.scatter(target, prior, c=its, cmap="viridis", norm=norm, marker=marker, s=60,
                   edgecolors="k", linewidths=0.5, zorder=2, label=run.label)  # fmt: skip
        ax.annotate("start", (target[0], prior[0]), textcoords="offset points", xytext=(6, 4),
                    fontsize=7, color="0.4")  # fmt: skip
    targets = sorted({_nice(r.target) for r in runs})
    ax.set(
        xlabel=f"target-task accuracy ({', '.join(targets)})",
        ylabel="mean prior-task accuracy",
        title="Learning vs forgetting over training",
    )
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="iteration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_forgetting_curves(runs: Sequence[Run]) -> plt.Figure:
    """Accuracy of every evaluated task over iterations, one panel per task, a line per run."""
    names = _ordered_union([r.tasks for r in runs])
    targets = {r.target for r in runs}
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, names, strict=False):
        for i, run in enumerate(runs):
            its, acc = run.accuracy(task)
            if len(its):
                ax.plot(its, acc, marker=MARKERS[i % len(MARKERS)], ms=4, color=f"C{i}",
                        label=run.label)  # fmt: skip
        kind = "target" if task in targets else "prior"
        ax.set(title=f"{_nice(task)} ({kind})", xlabel="iteration", ylabel="accuracy")
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _final_change(run: Run) -> tuple[float, float] | None:
    """(target, mean prior) accuracy at the last evaluated iteration minus at iteration 0."""
    its, target, prior = run.target_and_prior()
    if len(its) < 2 or its[0] != 0:
        return None
    return target[-1] - target[0], prior[-1] - prior[0]


def plot_lambda_ablation(runs: Sequence[Run]) -> plt.Figure:
    """Final target and mean prior accuracy vs the AWD strength lam (ES runs; lam=0: none)."""
    es_runs = sorted((r for r in runs if r.method == "es"), key=lambda r: r.lam)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, idx, marker in (("target", 1, "o"), ("mean prior", 2, "s")):
        xs, ys = [], []
        for r in es_runs:
            its, *vals = r.target_and_prior()
            if len(its):
                xs.append(r.lam)
                ys.append(vals[idx - 1][-1])
        ax.plot(xs, ys, marker=marker, label=f"{kind} accuracy (final)")
    for r in es_runs:
        its, target, prior = r.target_and_prior()
        if len(its) and its[0] == 0:
            ax.axhline(prior[0], color="C1", ls=":", lw=1)
            ax.axhline(target[0], color="C0", ls=":", lw=1)
            break
    ax.set_xscale("symlog", linthresh=min([r.lam for r in es_runs if r.lam > 0] or [1.0]))
    ax.set(xlabel="AWD lambda (0: plain ES)", ylabel="accuracy",
           title="Lambda ablation (dotted: base model)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_weight_drift(runs: Sequence[Run]) -> plt.Figure:
    """||theta_t - theta_0|| over iterations, and the final drift by module type."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, run in enumerate(runs):
        rows = sorted(run.drift, key=lambda r: r["iteration"])
        if rows:
            ax.plot(
                [r["iteration"] for r in rows],
                [r["frobenius"] for r in rows],
                marker=MARKERS[i % len(MARKERS)],
                ms=4,
                color=f"C{i}",
                label=run.label,
            )
    ax.set(xlabel="iteration", ylabel=r"$\|\theta_t - \theta_0\|_F$", title="Weight drift")
    ax.legend(fontsize=8)
    with_drift = [r for r in runs if r.drift]
    modules = [
        m for m in analysis.MODULES if any(m in r.last_drift()["per_module"] for r in with_drift)
    ]
    width = 0.8 / max(len(with_drift), 1)
    for i, run in enumerate(with_drift):
        last = run.last_drift()
        vals = [last["per_module"].get(m, 0.0) for m in modules]
        bx.bar(np.arange(len(modules)) + i * width, vals, width, color=f"C{runs.index(run)}",
               label=f"{run.label} (t={last['iteration']})")  # fmt: skip
    bx.set_xticks(np.arange(len(modules)) + width * (len(with_drift) - 1) / 2, modules)
    bx.set(ylabel=r"$\|\Delta\theta\|_F$ of the module type", title="Final drift by module")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_kl_heatmap(runs: Sequence[Run]) -> plt.Figure:
    """KL(base || tuned) per run and task at each run's last evaluated iteration."""
    names = _ordered_union([sorted({x["task"] for x in r.kl}) for r in runs])
    with_kl = [r for r in runs if r.kl]
    grid = np.full((len(with_kl), len(names)), np.nan)
    for i, run in enumerate(with_kl):
        last = max(x["iteration"] for x in run.kl)
        for x in run.kl:
            if x["iteration"] == last:
                grid[i, names.index(x["task"])] = x["kl"]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 0.6 * len(with_kl) + 1.8))
    im = ax.imshow(grid, cmap="magma_r", aspect="auto", vmin=0)
    ax.set_xticks(range(len(names)), [_nice(t) for t in names])
    ax.set_yticks(range(len(with_kl)), [r.label for r in with_kl])
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8,
                    color="w" if v > np.nanmax(grid) / 2 else "k")  # fmt: skip
    fig.colorbar(im, ax=ax, label="KL(base || tuned), nats/token")
    ax.set_title("KL divergence from the base model at the final iteration")
    fig.tight_layout()
    return fig


def plot_population_size(runs: Sequence[Run]) -> plt.Figure:
    """Plain-ES runs by population size N: final weight drift and prior-accuracy change."""
    es_runs = sorted((r for r in runs if r.method == "es" and r.lam == 0),
                     key=lambda r: r.population_size)  # fmt: skip
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    ns, drift, change = [], [], []
    for r in es_runs:
        last = r.last_drift()
        delta = _final_change(r)
        ns.append(r.population_size)
        drift.append(last["relative"] if last else np.nan)
        change.append(delta[1] if delta else np.nan)
    ax.plot(ns, drift, marker="o")
    ax.set(xlabel="population size N", ylabel=r"$\|\theta_T - \theta_0\| / \|\theta_0\|$",
           title="Final relative drift (plain ES)")  # fmt: skip
    bx.plot(ns, change, marker="s", color="C1")
    bx.axhline(0, color="0.5", lw=1)
    bx.set(xlabel="population size N", ylabel="change in mean prior accuracy",
           title="Forgetting at the final iteration (plain ES)")  # fmt: skip
    for a in (ax, bx):
        a.set_xscale("log", base=2)
    fig.tight_layout()
    return fig


def plot_training_reward(runs: Sequence[Run]) -> plt.Figure:
    """Mean population reward on the training prompts per iteration (metrics.jsonl)."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, run in enumerate(runs):
        rows = [m for m in run.metrics if "reward_mean" in m]
        if rows:
            ax.plot([m["iteration"] for m in rows], [m["reward_mean"] for m in rows],
                    color=f"C{i}", label=run.label)  # fmt: skip
    ax.set(xlabel="iteration", ylabel="mean training reward", title="Training reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_learning_curves(runs: Sequence[Run]) -> plt.Figure:
    """Training reward per iteration and per second of training, held-out accuracy and weight
    drift, a line per run (metrics.jsonl): e.g. full- vs low-rank noise on one budget."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for i, run in enumerate(runs):
        rows = sorted(run.metrics, key=lambda m: m["iteration"])
        train = [m for m in rows if "reward_mean" in m]
        style = dict(color=f"C{i}", label=run.label)
        if train:
            its = [m["iteration"] for m in train]
            axes[0, 0].plot(its, [m["reward_mean"] for m in train], **style)
            # wall time of training (population + update), excluding evaluation and checkpoints
            spent = np.cumsum(
                [m.get("time/population", 0) + m.get("time/update", 0) for m in train]
            )
            axes[0, 1].plot(spent / 60, [m["reward_mean"] for m in train], **style)
            axes[1, 1].plot([0, *its], [0, *[m["drift_norm"] for m in train]], **style)
        evals = [m for m in rows if "eval/accuracy" in m]
        if evals:
            axes[1, 0].plot([m["iteration"] for m in evals], [m["eval/accuracy"] for m in evals],
                            marker="o", **style)  # fmt: skip
    axes[0, 0].set(xlabel="iteration", ylabel="mean training reward", title="Reward per iteration")
    axes[0, 1].set(xlabel="minutes of training (population + update)",
                   ylabel="mean training reward", title="Reward per second")  # fmt: skip
    axes[1, 0].set(xlabel="iteration", ylabel="held-out accuracy", title="Held-out accuracy")
    axes[1, 1].set(xlabel="iteration", ylabel="||theta_t - theta_0||", title="Weight drift")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_run_summary(run: Run, summary: dict[str, Any] | None = None) -> plt.Figure:
    """One run at a glance (metrics.jsonl): training reward, held-out accuracy with 95 %
    Wilson intervals, and weight drift with KL(base || tuned) on the task not trained on."""
    rows = sorted(run.metrics, key=lambda m: m["iteration"])
    train = [m for m in rows if "reward_mean" in m]
    evals = [m for m in rows if "eval/accuracy" in m]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    if train:
        its = [m["iteration"] for m in train]
        ax.fill_between(its, [m["reward_min"] for m in train], [m["reward_max"] for m in train],
                        color="C0", alpha=0.2, label="population min-max")  # fmt: skip
        ax.plot(its, [m["reward_mean"] for m in train], color="C0", marker=".", label="mean")
        ax.legend(fontsize=8)
    ax.set(xlabel="iteration", ylabel="reward on training prompts", title="Training reward")
    ax = axes[1]
    if evals:
        its = [m["iteration"] for m in evals]
        acc = np.array([m["eval/accuracy"] for m in evals])
        n = np.array([m.get("eval/num_examples", 0) for m in evals])
        if np.all(n > 0):
            ci = np.array(
                [
                    analysis.stats.wilson_interval(round(a * k), k)
                    for a, k in zip(acc, n, strict=True)
                ]
            )
            yerr = np.maximum(0, [acc - ci[:, 0], ci[:, 1] - acc])  # [2, evals], rounding
            ax.errorbar(its, acc, yerr=yerr, color="C1", marker="o",
                        capsize=3, label="accuracy, 95 % Wilson interval")  # fmt: skip
        else:
            ax.plot(its, acc, color="C1", marker="o", label="accuracy")
        ax.legend(fontsize=8)
        title = f"Held-out accuracy ({int(n[-1])} examples)" if n[-1] else "Held-out accuracy"
    else:
        title = "Held-out accuracy"
    change = (summary or {}).get("accuracy", {})
    if "diff_ci" in change:
        lo, hi = change["diff_ci"]
        title += f"\nchange {100 * change['diff']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    ax.set(xlabel="iteration", ylabel="accuracy (greedy)", title=title)
    ax = axes[2]
    drift = [(m["iteration"], m["drift/relative"]) for m in rows if "drift/relative" in m]
    # ES rows log ||theta_t - theta_0|| every iteration: scaled by 1/||theta_0||, a full curve
    norms = [m["drift/frobenius"] / m["drift/relative"] for m in rows if m.get("drift/relative")]
    if norms and any("drift_norm" in m for m in train):
        drift = [(0, 0.0)] + [(m["iteration"], m["drift_norm"] / norms[0]) for m in train]
    if drift:
        ax.plot(
            *zip(*drift, strict=True),
            color="C2",
            marker="o",
            label="||theta_t - theta_0|| / ||theta_0||",
        )
    ax.set(xlabel="iteration", ylabel="relative weight drift", title="Drift and KL from the base")
    kl_keys = sorted({k for m in evals for k in m if k.startswith("kl/")})
    if kl_keys:
        twin = ax.twinx()
        for j, key in enumerate(kl_keys):
            pts = [(m["iteration"], m[key]) for m in evals if key in m]
            twin.plot(*zip(*pts, strict=True), color=f"C{3 + j}", marker="s", linestyle="--",
                      label=f"KL(base || tuned), {_nice(key[3:])}")  # fmt: skip
        twin.set_ylabel("KL (nats/token)")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    elif drift:
        ax.legend(fontsize=8)
    fig.suptitle(run.label, fontsize=10)
    fig.tight_layout()
    return fig


def plot_toy_random_walk(
    *, iterations: int = 500, dim: int = 2000, constrained: int = 10
) -> plt.Figure:
    """The toy random walk (esawd.toy): drift in ignored directions for N and AWD, vs theory."""
    from esawd import toy

    configs = [  # (label, population_size, lam, kind)
        ("ES, N=30", 30, 0.0, "none"),
        ("ES, N=128", 128, 0.0, "none"),
        ("ES, N=256", 256, 0.0, "none"),
        ("ES + AWD (L2, lam=10), N=30", 30, 10.0, "l2"),
    ]
    common = dict(num_iterations=iterations, dim=dim, num_constrained=constrained)
    fig, (ax_drift, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, n, lam, kind) in enumerate(configs):
        run = toy.run_random_walk(population_size=n, lam=lam, kind=kind, **common)
        ax_drift.plot(run.iterations, run.drift_perp, color=f"C{i}", label=label)
        pred = toy.predicted_drift(run.iterations, population_size=n, dim=dim,
                                   num_constrained=constrained, alpha=5e-4, lam=lam)  # fmt: skip
        ax_drift.plot(run.iterations, pred, color=f"C{i}", ls="--", lw=1)
        ax_loss.semilogy(run.iterations, run.loss, color=f"C{i}", label=label)
    ax_drift.set(xlabel="iteration t", ylabel=r"$\|P_\perp(\theta_t - \theta_0)\|$",
                 title="Drift in directions the reward ignores (dashed: theory)")  # fmt: skip
    ax_loss.set(xlabel="iteration t", ylabel="constrained loss", title="Target reward is learnt")
    ax_drift.legend(fontsize=8)
    fig.suptitle(f"Toy: reward depends on {constrained} of {dim} parameters "
                 "(sigma=1e-3, alpha=5e-4)")  # fmt: skip
    fig.tight_layout()
    return fig


def results_table(runs: Sequence[Run]) -> str:
    """A Markdown table: per run, accuracy of each task and mean prior accuracy at the first
    and last evaluated iteration, the final KL per task and the final relative drift."""
    names = _ordered_union([r.tasks for r in runs])
    head = ["run", "iterations", *[_nice(t) for t in names], "mean prior", "KL (final)", "drift"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def change(its, vals):
        return (
            f"{vals[0]:.3f} → {vals[-1]:.3f}"
            if len(its) > 1
            else (f"{vals[0]:.3f}" if len(its) else "-")
        )

    for r in runs:
        cells = [r.label]
        its_all = sorted({x["iteration"] for x in r.forgetting})
        cells.append(f"{its_all[0]} → {its_all[-1]}" if its_all else "-")
        for t in names:
            cells.append(change(*r.accuracy(t)))
        its, _, prior = r.target_and_prior()
        cells.append(change(its, prior) if r.prior_tasks else "-")
        if r.kl:
            last = max(x["iteration"] for x in r.kl)
            kl = {x["task"]: x["kl"] for x in r.kl if x["iteration"] == last}
            cells.append(", ".join(f"{_nice(t)} {kl[t]:.2g}" for t in names if t in kl))
        else:
            cells.append("-")
        d = r.last_drift()
        cells.append(f"{d['relative']:.2e}" if d else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# What each run-directory figure needs: (plot, has_data(runs), reason when it has none).
FIGURES: dict[str, tuple[Callable, Callable[[Sequence[Run]], bool], str]] = {
    "target_vs_prior": (
        plot_target_vs_prior,
        lambda rs: any(len(r.target_and_prior()[0]) and r.prior_tasks for r in rs),
        "no run has forgetting.jsonl rows of its target and a prior task",
    ),
    "forgetting_curves": (
        plot_forgetting_curves,
        lambda rs: any(r.forgetting for r in rs),
        "no forgetting.jsonl",
    ),
    "lambda_ablation": (
        plot_lambda_ablation,
        lambda rs: any(
            len(r.target_and_prior()[0]) and r.prior_tasks for r in rs if r.method == "es"
        ),
        "no ES run has forgetting.jsonl rows of its target and a prior task",
    ),  # fmt: skip
    "weight_drift": (
        plot_weight_drift,
        lambda rs: any(r.drift for r in rs),
        "no weight_drift.jsonl",
    ),
    "kl_heatmap": (plot_kl_heatmap, lambda rs: any(r.kl for r in rs), "no kl.jsonl"),
    "population_size": (
        plot_population_size,
        lambda rs: any(r.method == "es" and r.lam == 0 and r.drift for r in rs),
        "no plain-ES run (without AWD) has weight_drift.jsonl",
    ),
    "training_reward": (
        plot_training_reward,
        lambda rs: any("reward_mean" in m for r in rs for m in r.metrics),
        "no training metrics",
    ),
    "learning_curves": (
        plot_learning_curves,
        lambda rs: any("reward_mean" in m for r in rs for m in r.metrics),
        "no training metrics",
    ),
}


def write_figures(
    workdirs: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    toy: bool = True,
    log: Callable[[str], None] = print,
    dpi: int = 120,
) -> list[Path]:
    """Write every figure (or `names`) the runs have data for as out/<name>.png."""
    runs = load_runs(workdirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(FIGURES) + (["toy_random_walk"] if toy else []) if names is None else names
    unknown = [n for n in wanted if n not in FIGURES and n != "toy_random_walk"]
    if unknown:
        raise ValueError(f"unknown figures {unknown}; choose from {[*FIGURES, 'toy_random_walk']}")
    written = []
    for name in wanted:
        if name == "toy_random_walk":
            fig = plot_toy_random_walk()
        else:
            plot, has_data, reason = FIGURES[name]
            if not has_data(runs):
                log(f"skipped {name}: {reason}")
                continue
            fig = plot(runs)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
        log(f"wrote {path}")
    return written
