"""The paper's figures from run directories, as matplotlib figures (and PNG files).

    from esawd import figures
    runs = figures.load_runs(["runs/es_n4", "runs/awd_n4"])
    figures.plot_target_vs_prior(runs).savefig("fig1a.png")
    figures.write_figures(["runs/es_n4", "runs/awd_n4"], "figures/")   # every figure + table
    print(figures.accuracy_change_table(runs, fmt="latex"))

Each plot reads what `python -m experiments.evaluate` wrote into the run directories
(forgetting.jsonl, kl.jsonl, weight_drift.jsonl) and the run's config.json; a figure whose data
no run has is skipped by `write_figures`, with the reason. `experiments/figures.py` is the
command line, `notebooks/` the Colab versions.

A run's prior tasks are all its evaluated tasks other than its target, as in the paper's
protocol (`--protocol paper`: the two targets a run was not trained on count as prior tasks,
so the prior mean is over six of the seven tasks).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from esawd import analysis
from esawd.analysis.forgetting import PAPER_TASKS
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
    def seed(self) -> int:
        """es.seed or grpo.seed: it draws the noise (or the samples) and the target's training
        and held-out examples (`esawd.loop.setup`), so runs of one seed share the latter."""
        return int(self.config.get(self.method, {}).get("seed", 0))

    @property
    def arm(self) -> str:
        """What the run is, without its seed: `analysis.run_label` of its config."""
        return analysis.run_label(self.config)

    @property
    def lam(self) -> float:
        """The AWD strength, 0 without AWD (GRPO: 0)."""
        awd = self.config.get("awd", {})
        return 0.0 if self.method != "es" or awd.get("kind", "none") == "none" else awd["lam"]

    @property
    def tasks(self) -> list[str]:
        """Evaluated tasks: the target, then the others in the paper's order."""
        names = _task_order(sorted({r["task"] for r in self.forgetting}))
        return sorted(names, key=lambda t: t != self.target)

    @property
    def prior_tasks(self) -> list[str]:
        """Every evaluated task but the target (the other target tasks included)."""
        return [t for t in self.tasks if t != self.target]

    @property
    def model_name(self) -> str:
        """config["model"]["name"]: a preset, a hub id or a path."""
        return str(self.config.get("model", {}).get("name", ""))

    @property
    def model_label(self) -> str:
        """'Qwen2.5-3B', 'Llama-3.2-3B', 'SmolLM2-135M'; the folder name for other models."""
        return model_label(self.model_name)

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

    def _last_prior_kl_rows(self) -> list[dict[str, Any]]:
        """The prior tasks' KL rows at the last iteration with KL rows."""
        last = max((r["iteration"] for r in self.kl), default=None)
        return [r for r in self.kl if r["iteration"] == last and r["task"] != self.target]

    def last_prior_kl(self) -> float:
        """KL(base || tuned) at the last iteration with KL rows, averaged over the prior
        tasks' prompts; nan without one."""
        prior = self._last_prior_kl_rows()
        return float(np.mean([r["kl"] for r in prior])) if prior else float("nan")

    def last_prior_kl_ci(self) -> tuple[float, float] | None:
        """`analysis.stats.kl_interval` of `last_prior_kl` when it is one prior task's KL whose
        row kept its per-prompt values (rows written before they were kept have none)."""
        prior = self._last_prior_kl_rows()
        if len(prior) != 1 or len(prior[0].get("prompt_sums", [])) < 2:
            return None
        return analysis.stats.kl_interval(prior[0]["prompt_sums"], prior[0]["prompt_tokens"])

    def evaluations(self, task: str) -> list[dict[str, Any]]:
        """`task`'s evaluations that kept per-example results ({iteration, correct}, in
        iteration order); the target's from the trainer's held-out evaluations when the
        analysis has fewer than two."""
        rows = sorted(
            (r for r in self.forgetting if r["task"] == task and "correct" in r),
            key=lambda r: r["iteration"],
        )
        if len(rows) < 2 and task == self.target:  # the trainer's held-out evaluations
            rows = [{"iteration": r["iteration"], "correct": r["eval/correct"]}
                    for r in self.metrics if "eval/correct" in r]  # fmt: skip
            rows.sort(key=lambda r: r["iteration"])
        return rows

    def paired_change(self, task: str) -> dict[str, Any] | None:
        """The first and the last evaluation of `task` compared example by example
        (`analysis.stats.paired_difference`: Wilson intervals, Newcombe's interval of the
        change, McNemar's p); None without two evaluations that kept per-example results."""
        rows = self.evaluations(task)
        if len(rows) < 2 or len(rows[0]["correct"]) != len(rows[-1]["correct"]):
            return None
        d = analysis.stats.paired_difference(rows[0]["correct"], rows[-1]["correct"])
        return {"from": rows[0]["iteration"], "to": rows[-1]["iteration"], **d}

    @property
    def paired_tasks(self) -> list[str]:
        """The tasks `paired_change` can compare: the target (from the analysis, or from the
        trainer's held-out evaluations) and the evaluated prior tasks."""
        first = [] if self.target in self.tasks else [self.target]
        return [t for t in first + self.tasks if self.paired_change(t) is not None]

    def accuracy_change(self, task: str) -> float | None:
        """Accuracy at the last evaluated iteration minus at the first (the base model at 0);
        None with fewer than two evaluated iterations."""
        its, acc = self.accuracy(task)
        return float(acc[-1] - acc[0]) if len(its) > 1 else None


def load_runs(workdirs: Sequence[str | Path]) -> list[Run]:
    """The runs at `workdirs`; labels made unique where they clash: with the seed where the
    clashing runs differ only in it ('ES N=4 (seed 1)'), else with the folder name."""
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
    for label in {r.label for r in runs}:
        clash = [r for r in runs if r.label == label]
        if len(clash) < 2:
            continue
        by_seed = len({r.seed for r in clash}) == len(clash)
        for r in clash:
            r.label = f"{label} (seed {r.seed})" if by_seed else f"{label} ({r.workdir.name})"
    return runs


def _ordered_union(lists: Sequence[Sequence[str]]) -> list[str]:
    """Every name of the lists, once, in order of first appearance."""
    out: list[str] = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out


def _nice(task: str) -> str:
    if task.endswith(analysis.likelihood.SUFFIX):  # scored by option log-likelihood
        return _nice(analysis.likelihood.base_task(task)) + " (log-lik.)"
    return {
        "arc_challenge": "ARC-Challenge",
        "mmlu_pro": "MMLU-Pro",
        "gsm8k": "GSM8K",
        "hellaswag": "HellaSwag",
    }.get(task, task.capitalize().replace("Piqa", "PIQA").replace("Proofwriter", "ProofWriter"))


def _task_order(names: Sequence[str]) -> list[str]:
    """The paper's seven tasks in its order, then any others as given."""
    return [t for t in PAPER_TASKS if t in names] + [t for t in names if t not in PAPER_TASKS]


def _task_key(task: str) -> tuple[int, str]:
    return (PAPER_TASKS.index(task) if task in PAPER_TASKS else len(PAPER_TASKS), task)


# Model family and size from config["model"]["name"].
_FAMILIES = {"qwen2.5": "Qwen2.5", "qwen2": "Qwen2", "smollm2": "SmolLM2"}
_FAMILY_ORDER = ("Qwen2.5", "Llama-3.2", "SmolLM2")  # the paper's order first
_SIZE = re.compile(r"[-_](\d+(?:\.\d+)?)([bBmM])(?=$|[-_.])")


def model_family_size(name: str) -> tuple[str, str]:
    """(family, size) of a model preset, hub id or path: 'qwen2.5-3b-instruct' and
    'Qwen/Qwen2.5-3B-Instruct' -> ('Qwen2.5', '3B'), 'llama-3.2-3b-instruct' ->
    ('Llama-3.2', '3B'); a name without a size token -> (its last path part, '')."""
    base = Path(str(name).rstrip("/")).name or str(name)
    m = _SIZE.search(base)
    if m is None or m.start() == 0:
        return base, ""
    family = base[: m.start()]
    low = family.lower()
    family = _FAMILIES.get(low, "Llama" + family[5:] if low.startswith("llama") else family)
    return family, m.group(1) + m.group(2).upper()


def model_label(name: str) -> str:
    """'Qwen2.5-3B' for 'qwen2.5-3b-instruct'; the last path part when there is no size."""
    family, size = model_family_size(name)
    return f"{family}-{size}" if size else family


def _size_key(size: str) -> tuple[int, float]:
    if not size:
        return (1, 0.0)
    return (0, float(size[:-1]) * (1e6 if size[-1] == "M" else 1e9))


def _family_key(family: str) -> tuple[int, str]:
    return (_FAMILY_ORDER.index(family), "") if family in _FAMILY_ORDER else (99, family)


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


def plot_findings(runs: Sequence[Run]) -> plt.Figure:
    """The three findings side by side, one column per run: (a) every task's change from the
    first to the last evaluation with Newcombe's paired 95 % interval (the target starred,
    prior tasks dotted), (b) the share of each prior task's examples whose result changed
    either way, with its Wilson interval (an undirected walk raises it even where accuracy
    stays level), (c) the final weight drift, (d) the final KL(base || tuned), averaged over
    the prior tasks, with its bootstrap interval where kept (`Run.last_prior_kl_ci`) (the
    paper's Figures 1, 4 and 5 in one)."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    x = np.arange(len(runs))
    tasks = _task_order(_ordered_union([r.paired_tasks for r in runs]))
    targets = {r.target for r in runs}
    width = 0.7 / max(len(tasks), 1)

    def bars(ax, key: str, with_targets: bool) -> None:
        """Per task (a colour each), every run's paired_change[key] with its interval."""
        for j, task in enumerate(tasks):
            pts = [(i, run.paired_change(task)) for i, run in enumerate(runs)]
            pts = [(i, d) for i, d in pts if d is not None]
            if not pts or (task in targets and not with_targets):
                continue
            xs = np.array([i for i, _ in pts]) + (j - (len(tasks) - 1) / 2) * width
            mid = np.array([100 * d[key] for _, d in pts])
            lo = mid - np.array([100 * d[f"{key}_ci"][0] for _, d in pts])
            hi = np.array([100 * d[f"{key}_ci"][1] for _, d in pts]) - mid
            star, name = task in targets, _TABLE_NAMES.get(task, _nice(task))
            ax.errorbar(xs, mid, yerr=[lo, hi], fmt="*" if star else "o", ms=8 if star else 5,
                        capsize=3, color=f"C{j}", label=name)  # fmt: skip
        if ax.get_legend_handles_labels()[0]:  # above the points, in room made for it
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi + 0.3 * (hi - lo))
            ax.legend(fontsize=8, ncols=2, loc="upper center")

    bars(axes[0], "diff", with_targets=True)
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[0].set(ylabel="accuracy change (points), paired 95 % CI",
                title="(a) Target and prior tasks")  # fmt: skip
    bars(axes[1], "changed", with_targets=False)
    axes[1].set(ylabel="examples changed (%), Wilson 95 % CI",
                title="(b) Prior-task answers changed")  # fmt: skip
    axes[1].set_ylim(bottom=0)
    drift = [r.last_drift()["frobenius"] if r.drift else np.nan for r in runs]
    axes[2].bar(x, drift, color=[f"C{i}" for i in range(len(runs))])
    axes[2].set(ylabel=r"$\|\theta_T - \theta_0\|_F$", title="(c) Weight drift")
    kls = [r.last_prior_kl() for r in runs]
    axes[3].bar(x, kls, color=[f"C{i}" for i in range(len(runs))])
    with_ci = [(i, kls[i], ci) for i, r in enumerate(runs) if (ci := r.last_prior_kl_ci())]
    if with_ci:  # only the runs whose rows kept per-prompt values
        i, k, ci = (np.array(v) for v in zip(*with_ci, strict=True))
        yerr = np.stack([k - ci[:, 0], ci[:, 1] - k])
        axes[3].errorbar(i, k, yerr=yerr, fmt="none", ecolor="k", capsize=3)
    axes[3].set(ylabel="nats / token (bootstrap 95 % CI where kept)",
                title="(d) KL(base || tuned), prior-task prompts")  # fmt: skip
    for a in axes:
        a.set_xticks(x, [r.label for r in runs], rotation=30, ha="right", fontsize=8)
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


# The influence of model and target on forgetting (the paper's Figure 3).
INFLUENCE_METHODS = ("ES", "GRPO")  # plain ES (no AWD) and the GRPO baseline, as the paper
_BOX_COLORS = {"ES": "#000000", "GRPO": "#9e9e9e"}


def _influence_method(run: Run) -> str | None:
    if run.method == "grpo":
        return "GRPO"
    return "ES" if run.method == "es" and run.lam == 0 else None


def influence_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run and prior task: the change in its accuracy, final minus initial, in
    percentage points, with the run's method ('ES': plain ES, 'GRPO'; ES + AWD runs are
    left out), model family and size and target task."""
    rows = []
    for r in runs:
        method = _influence_method(r)
        if method is None:
            continue
        family, size = model_family_size(r.model_name)
        for prior in r.prior_tasks:
            delta = r.accuracy_change(prior)
            if delta is not None:
                rows.append({"run": r.label, "method": method, "family": family, "size": size,
                             "target": r.target, "prior": prior, "delta": 100 * delta})  # fmt: skip
    return rows


@dataclasses.dataclass
class BoxPanel:
    """One panel of the influence figure: per group, the changes of each method."""

    title: str
    groups: list[str]
    labels: list[str]  # the groups' tick labels
    values: dict[tuple[str, str], list[float]]  # (group, method) -> changes in points
    split: bool = True  # a box per method side by side in each group (Overall: False)


def _most(spread: dict[str, set], rows: dict[str, int], order: Callable) -> str | None:
    """The key with the most distinct values, then the most rows, then first in `order`."""
    return min(spread, key=lambda k: (-len(spread[k]), -rows[k], order(k))) if spread else None


def influence_panels(
    runs: Sequence[Run], *, family_size: str | None = None, size_family: str | None = None
) -> list[BoxPanel]:
    """The four panels of Figure 3: overall, by target task, by model family at one size
    (`family_size`; default the size most families share, the paper's 3B) and by model size
    within one family (`size_family`; default the family with most sizes, the paper's Qwen2.5).
    """
    rows = influence_rows(runs)
    methods = [m for m in INFLUENCE_METHODS if any(r["method"] == m for r in rows)]
    families_at: dict[str, set] = {}  # size -> families
    sizes_of: dict[str, set] = {}  # family -> sizes
    for r in rows:
        families_at.setdefault(r["size"], set()).add(r["family"])
        sizes_of.setdefault(r["family"], set()).add(r["size"])
    count = lambda k: {v: sum(r[k] == v for r in rows) for v in {r[k] for r in rows}}
    if family_size is None:
        family_size = _most(families_at, count("size"), _size_key)
    if size_family is None:
        size_family = _most(sizes_of, count("family"), _family_key)

    def panel(title, key, keep, order, label):
        picked = [r for r in rows if keep(r)]
        groups = sorted({r[key] for r in picked}, key=order)
        values: dict[tuple[str, str], list[float]] = {}
        for r in picked:
            values.setdefault((r[key], r["method"]), []).append(r["delta"])
        return BoxPanel(title, groups, [label(g) for g in groups], values)

    return [
        BoxPanel(
            "Overall",
            methods,
            methods,
            {(m, m): [r["delta"] for r in rows if r["method"] == m] for m in methods},
            split=False,
        ),
        panel("Target task", "target", lambda r: True, _task_key, _nice),
        panel(
            f"Model family ({family_size or 'no size'})",
            "family",
            lambda r: r["size"] == family_size,
            _family_key,
            str,
        ),
        panel(
            f"Model size ({size_family})",
            "size",
            lambda r: r["family"] == size_family,
            _size_key,
            lambda s: s or "?",
        ),
    ]


def plot_influence(
    runs: Sequence[Run], *, family_size: str | None = None, size_family: str | None = None
) -> plt.Figure:
    """Figure 3: change in prior-task accuracy (final minus initial, one value per run and prior
    task), ES vs GRPO, overall, by target task, by model family and by model size."""
    panels = influence_panels(runs, family_size=family_size, size_family=size_family)
    widths = [max(len(p.groups), 1) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 + 1.5 * sum(widths), 3.2), sharey=True,
                             width_ratios=widths)  # fmt: skip
    es_n = {r.population_size for r in runs if _influence_method(r) == "ES"}
    names = {"ES": f"ES (N={es_n.pop()})" if len(es_n) == 1 else "ES", "GRPO": "GRPO"}
    for ax, p in zip(axes, panels, strict=True):
        for j, group in enumerate(p.groups):
            for method, offset in (("ES", -0.18), ("GRPO", 0.18)):
                vals = p.values.get((group, method), [])
                if not vals:
                    continue
                pos = j + 1 + (offset if p.split else 0.0)
                box = ax.boxplot([vals], positions=[pos], widths=0.3 if p.split else 0.6,
                                 patch_artist=True, manage_ticks=False)  # fmt: skip
                for b in box["boxes"]:  # gid: which box it is, for readers of the figure
                    b.set(facecolor=_BOX_COLORS[method], edgecolor="black", alpha=0.95,
                          gid=f"{group}/{method}")  # fmt: skip
                for m in box["medians"]:
                    m.set(color="white", linewidth=1.5, gid=f"{group}/{method} median")
                for f in box["fliers"]:
                    f.set(marker="o", markersize=3, markerfacecolor=_BOX_COLORS[method],
                          markeredgecolor="black")  # fmt: skip
        ax.axhline(0.0, color="0.4", ls="--", lw=1)
        labels = p.labels if p.split else [names[g] for g in p.groups]
        ax.set_xticks(range(1, len(p.groups) + 1), labels)
        ax.set_xlim(0.4, len(p.groups) + 0.6)
        ax.set_xlabel(p.title)
        ax.grid(axis="y", color="0.88")
    axes[0].set_ylabel(r"$\Delta$ prior-task accuracy (points)")
    handles = [matplotlib.patches.Patch(facecolor=_BOX_COLORS[m], edgecolor="black", label=names[m])
               for m in INFLUENCE_METHODS]  # fmt: skip
    axes[-1].legend(handles=handles, fontsize=8)
    fig.tight_layout()
    return fig


def plot_three_tasks(runs: Sequence[Run]) -> plt.Figure:
    """Target accuracy vs mean prior-task accuracy over training, one panel per target task
    (the paper's Countdown, GSM8K and ProofWriter figure): a point per evaluated iteration,
    coloured by iteration, one marker per model and method; the prior tasks are all the
    others."""
    data = [(r, *r.target_and_prior()) for r in runs if r.prior_tasks]
    data = [d for d in data if len(d[1])]
    targets = _task_order(list(dict.fromkeys(r.target for r, *_ in data)))
    several_models = len({r.model_label for r, *_ in data}) > 1
    names = [f"{r.model_label} {analysis.run_label(r.config)}" if several_models
             else analysis.run_label(r.config) for r, *_ in data]  # fmt: skip
    markers: dict[str, str] = {}  # the paper's: ES "o", GRPO "X"; more runs take the rest
    others = iter("osD^vP*h<>pd8H" * 4)
    for name, (r, *_) in zip(names, data, strict=True):
        if name not in markers:
            first_grpo = r.method == "grpo" and "X" not in markers.values()
            markers[name] = "X" if first_grpo else next(others)
    last = max((its.max() for _, its, _, _ in data), default=1)
    norm = matplotlib.colors.Normalize(0, max(last, 1))
    fig, axes = plt.subplots(1, max(len(targets), 1), figsize=(3.6 * max(len(targets), 1) + 1, 3),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    axes = list(axes.flat)
    for ax, target in zip(axes, targets, strict=False):  # no data: one empty panel
        for name, (run, its, acc, prior) in zip(names, data, strict=True):
            if run.target != target:
                continue
            ax.plot(prior, acc, color="black", lw=1, alpha=0.3, zorder=1)
            ax.scatter(prior, acc, c=its, cmap="viridis", norm=norm, s=60, marker=markers[name],
                       edgecolors="black", alpha=0.9, zorder=2, label=name)  # fmt: skip
        ax.set(xlabel="mean prior-task accuracy", ylabel=f"{_nice(target)} accuracy")
        ax.grid(alpha=0.3)
    handles = [matplotlib.lines.Line2D([0], [0], marker=m, ls="", markerfacecolor="0.45",
                                       markeredgecolor="0.25", markersize=7, label=name)
               for name, m in markers.items()]  # fmt: skip
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=min(len(handles), 4))
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes,
                 label="iteration", fraction=0.035, pad=0.03)  # fmt: skip
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


# The final-minus-initial accuracy table (the reference's create_latex_table.ipynb).
_TABLE_NAMES = {"arc_challenge": "ARC-C"}
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def _latex_text(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def accuracy_change_rows(runs: Sequence[Run], *, group_seeds: bool = True) -> list[dict]:
    """The rows of `accuracy_change_table`: per row, its label, target, the runs it averages
    and, per task and for 'average' (the mean over the prior tasks of each run), the changes
    of its runs (final minus initial accuracy, in percentage points)."""
    groups: dict[Any, list[Run]] = {}
    for r in runs:
        key = (r.target, r.model_label, analysis.run_label(r.config)) if group_seeds else r.workdir
        groups.setdefault(key, []).append(r)
    names = _task_order(_ordered_union([r.tasks for r in runs]))
    rows = []
    for members in groups.values():
        first = members[0]
        label = (
            f"{first.model_label} {analysis.run_label(first.config)}"
            if group_seeds
            else first.label
        )
        changes: dict[str, list[float]] = {t: [] for t in [*names, "average"]}
        for r in members:
            for t in names:
                d = r.accuracy_change(t)
                if d is not None:
                    changes[t].append(100 * d)
            prior = [r.accuracy_change(t) for t in r.prior_tasks]
            prior = [100 * d for d in prior if d is not None]
            if prior:
                changes["average"].append(float(np.mean(prior)))
        rows.append({"label": label, "target": first.target, "runs": [r.workdir for r in members],
                     "changes": changes})  # fmt: skip
    return rows


def accuracy_change_table(
    runs: Sequence[Run], fmt: str = "markdown", *, digits: int = 1, group_seeds: bool = True
) -> str:
    """Final minus initial accuracy of every evaluated task, in percentage points, one row per
    model and method (runs that differ only in their seed are one row: their mean, and their
    standard deviation after ± or as a subscript), and Average: each run's mean over its prior
    tasks (all but the target), averaged over the row's runs. fmt: 'markdown' or 'latex' (a
    booktabs tabular, as the reference's create_latex_table.ipynb writes it)."""
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt={fmt!r}: choose 'markdown' or 'latex'")
    rows = accuracy_change_rows(runs, group_seeds=group_seeds)
    names = _task_order(_ordered_union([r.tasks for r in runs]))
    head = ["Run", "Target", *[_TABLE_NAMES.get(t, _nice(t)) for t in names], "Average"]

    def cell(vals: list[float]) -> str:
        if not vals:
            return "--" if fmt == "latex" else "-"
        mean = f"{np.mean(vals):+.{digits}f}"
        std = f"{np.std(vals, ddof=1):.{digits}f}" if len(vals) > 1 else None
        if fmt == "latex":
            return f"${mean}_{{({std})}}$" if std else f"${mean}$"
        return f"{mean} ± {std}" if std else mean

    body = [[row["label"], _nice(row["target"]),
             *[cell(row["changes"][t]) for t in [*names, "average"]]] for row in rows]  # fmt: skip
    notes = [
        "% Final minus initial accuracy (percentage points); Average: over the prior tasks.",
        "% Needs \\usepackage{booktabs}.",
    ]
    return _render(head, body, fmt, notes)


def _render(
    head: list[str], body: list[list[str]], fmt: str, notes: list[str], *, text_columns: int = 2
) -> str:
    """A table as markdown, or as a booktabs tabular after LaTeX comment lines `notes` (the
    first `text_columns` columns are text, the others numbers)."""
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + "\n"
    lines = [
        *notes,
        "\\begin{tabular}{" + "l" * text_columns + "r" * (len(head) - text_columns) + "}",
        "\\toprule",
        " & ".join(_latex_text(h) for h in head) + " \\\\",
        "\\midrule",
        *[
            " & ".join([*map(_latex_text, c[:text_columns]), *c[text_columns:]]) + " \\\\"
            for c in body
        ],
        "\\bottomrule",
        "\\end{tabular}",
    ]
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
    "findings": (
        plot_findings,
        lambda rs: any(r.paired_tasks for r in rs),
        "no run has a task evaluated twice with per-example results",
    ),
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
    "influence": (
        plot_influence,
        lambda rs: bool(influence_rows(rs)),
        "no plain-ES or GRPO run has a prior task evaluated at two iterations",
    ),
    "three_tasks": (
        plot_three_tasks,
        lambda rs: any(len(r.target_and_prior()[0]) and r.prior_tasks for r in rs),
        "no run has forgetting.jsonl rows of its target and a prior task",
    ),
}


# The tables: name -> (has_data(runs), reason); written as <name>.md and <name>.tex.
def paired_change_table(runs: Sequence[Run], fmt: str = "markdown") -> str:
    """Every run's first and last evaluation of every task, paired example by example:
    accuracy with its Wilson 95 % interval, the change in points with Newcombe's paired 95 %
    interval, gained/lost examples, the share of examples whose result changed either way
    (Wilson interval) and McNemar's exact p. A change is called (bold in markdown) only when
    its interval excludes 0. fmt: 'markdown' or 'latex'."""
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt={fmt!r}: choose 'markdown' or 'latex'")
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    ci = lambda lo, hi: f"[{pct(lo)}, {pct(hi)}]"  # noqa: E731
    head = ["Run", "Task", "n", "t", "Before", "After", "Change (points)", "+/-", "Changed (%)",
            "McNemar p"]  # fmt: skip
    body = []
    for run in runs:
        for task in run.paired_tasks:
            d = run.paired_change(task)
            lo, hi = d["diff_ci"]
            change = f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            if lo > 0 or hi < 0:
                change = f"**{change}**" if fmt == "markdown" else f"\\textbf{{{change}}}"
            body.append([
                run.label, _TABLE_NAMES.get(task, _nice(task)), str(d["n"]),
                f"{d['from']}→{d['to']}" if fmt == "markdown" else f"{d['from']}--{d['to']}",
                f"{pct(d['before'])} {ci(*d['before_ci'])}",
                f"{pct(d['after'])} {ci(*d['after_ci'])}",
                change, f"+{d['gained']}/-{d['lost']}",
                f"{pct(d['changed'])} {ci(*d['changed_ci'])}", f"{d['p_mcnemar']:.2g}",
            ])  # fmt: skip
    notes = ["% Accuracy (%) with Wilson 95 % intervals; change with Newcombe's paired interval."]
    return _render(head, body, fmt, notes)


def arm_pairs(runs: Sequence[Run]) -> list[tuple[Run, Run, str, dict[str, Any]]]:
    """(a, b, task, difference) for every pair of runs of the same seed (a before b in
    `runs`) and every task both evaluated last at the same iteration on the same examples:
    b's final accuracy minus a's, paired example by example
    (`analysis.stats.paired_difference`); where both started from iteration 0, `changed`
    compares the same way which examples changed from the base. Runs of different seeds are
    not paired: their target's held-out examples differ (`Run.seed`); `seed_table` sets the
    seeds side by side."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a.seed != b.seed:
                continue
            for task in _task_order(_ordered_union([a.paired_tasks, b.paired_tasks])):
                ra, rb = a.evaluations(task), b.evaluations(task)
                if not (ra and rb) or ra[-1]["iteration"] != rb[-1]["iteration"]:
                    continue
                if len(ra[-1]["correct"]) != len(rb[-1]["correct"]):
                    continue
                d = analysis.stats.paired_difference(ra[-1]["correct"], rb[-1]["correct"])
                d = {"iteration": ra[-1]["iteration"], **d}
                if ra[0]["iteration"] == rb[0]["iteration"] == 0 and len(ra) > 1 and len(rb) > 1:
                    flips = [np.not_equal(r[0]["correct"], r[-1]["correct"]) for r in (ra, rb)]
                    d["changed"] = analysis.stats.paired_difference(*flips)
                out.append((a, b, task, d))
    return out


def arm_comparison_table(runs: Sequence[Run], fmt: str = "markdown") -> str:
    """Runs compared with each other at their last evaluation, on the same examples: each
    run's accuracy with its Wilson 95 % interval, the difference (second minus first) with
    Newcombe's paired 95 % interval, the examples only the second / only the first got right,
    and McNemar's exact p; then the share of examples whose result changed from iteration 0
    in each run, and McNemar's p for that difference. A difference is called (bold) only when
    its interval excludes 0."""
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt={fmt!r}: choose 'markdown' or 'latex'")
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    head = ["Task", "First run", "Second run", "n", "t", "First", "Second",
            "Second - first (points)", "+/-", "McNemar p", "Changed from t=0 (%)",
            "McNemar p (changed)"]  # fmt: skip
    body = []
    for a, b, task, d in arm_pairs(runs):
        lo, hi = d["diff_ci"]
        diff = f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        if lo > 0 or hi < 0:
            diff = f"**{diff}**" if fmt == "markdown" else f"\\textbf{{{diff}}}"
        body.append([
            _TABLE_NAMES.get(task, _nice(task)), a.label, b.label, str(d["n"]), str(d["iteration"]),
            f"{pct(d['before'])} [{pct(d['before_ci'][0])}, {pct(d['before_ci'][1])}]",
            f"{pct(d['after'])} [{pct(d['after_ci'][0])}, {pct(d['after_ci'][1])}]",
            diff, f"+{d['gained']}/-{d['lost']}", f"{d['p_mcnemar']:.2g}",
            *((f"{pct(d['changed']['before'])} → {pct(d['changed']['after'])}"
               if fmt == "markdown" else
               f"{pct(d['changed']['before'])} $\\to$ {pct(d['changed']['after'])}",
               f"{d['changed']['p_mcnemar']:.2g}") if "changed" in d else ("-", "-")),
        ])  # fmt: skip
    notes = [
        "% Accuracy (%) at the last evaluation, Wilson 95 % intervals; the difference with",
        "% Newcombe's paired interval on the same examples; needs \\usepackage{booktabs}.",
    ]
    return _render(head, body, fmt, notes, text_columns=3)


def seed_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs by arm (`Run.arm`), in order of first appearance, each arm's runs by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.arm, []).append(run)
    return {arm: sorted(rs, key=lambda r: r.seed) for arm, rs in groups.items()}


def seed_table(runs: Sequence[Run], fmt: str = "markdown") -> str:
    """Each arm's seeds side by side: per task, the change from the first to the last
    evaluation (points, Newcombe's paired 95 % interval, bold where it excludes 0) and, for
    prior tasks, the share of examples whose result changed (%); the final weight drift and
    the final KL(base || tuned) on prior-task prompts (with its bootstrap interval where the
    rows kept per-prompt values, `Run.last_prior_kl_ci`). Mean: over the seeds that have the
    measure; Called: in how many seeds the change's interval lay above / below 0. With a few
    seeds this is a replication count, not a test across seeds."""
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt={fmt!r}: choose 'markdown' or 'latex'")
    seeds = sorted({r.seed for r in runs})
    head = ["Arm", "Measure", *(f"Seed {k}" for k in seeds), "Mean", "Called (+/-)"]
    bold = (lambda x: f"**{x}**") if fmt == "markdown" else (lambda x: f"\\textbf{{{x}}}")
    body = []
    for arm, group in seed_groups(runs).items():
        by_seed = {r.seed: r for r in group}
        targets = {r.target for r in group}
        tasks = _task_order(_ordered_union([r.paired_tasks for r in group]))
        for task in sorted(tasks, key=lambda t: t not in targets):
            name = _TABLE_NAMES.get(task, _nice(task))
            changes = {k: r.paired_change(task) for k, r in by_seed.items()}
            changes = {k: d for k, d in changes.items() if d is not None}
            cells, up, down = [], 0, 0
            for k in seeds:
                d = changes.get(k)
                if d is None:
                    cells.append("-")
                    continue
                lo, hi = d["diff_ci"]
                cell = f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                up, down = up + (lo > 0), down + (hi < 0)
                cells.append(bold(cell) if lo > 0 or hi < 0 else cell)
            mean = np.mean([100 * d["diff"] for d in changes.values()])
            body.append([arm, f"{name}: change (points)", *cells, f"{mean:+.1f}",
                         f"+{up}/-{down} of {len(changes)}"])  # fmt: skip
            if task in targets:
                continue
            shares = {k: 100 * d["changed"] for k, d in changes.items()}
            body.append([arm, f"{name}: changed (%)",
                         *(f"{shares[k]:.1f}" if k in shares else "-" for k in seeds),
                         f"{np.mean(list(shares.values())):.1f}", ""])  # fmt: skip
        for measure, value, interval, form in (
            ("Drift", lambda r: r.last_drift()["frobenius"] if r.drift else math.nan,
             lambda r: None, "{:.3g}"),
            ("KL (nats/token)", Run.last_prior_kl, Run.last_prior_kl_ci, "{:.4f}"),
        ):  # fmt: skip
            vals = {k: value(r) for k, r in by_seed.items()}
            vals = {k: v for k, v in vals.items() if not math.isnan(v)}
            if not vals:
                continue
            cells = []
            for k in seeds:
                ci = interval(by_seed[k]) if k in vals else None
                cell = form.format(vals[k]) if k in vals else "-"
                cells.append(f"{cell} [{form.format(ci[0])}, {form.format(ci[1])}]" if ci else cell)
            body.append([arm, measure, *cells, form.format(np.mean(list(vals.values()))), ""])
    notes = [
        "% Each arm's seeds side by side: changes from the first to the last evaluation with",
        "% Newcombe's paired 95 % interval (bold: it excludes 0); needs \\usepackage{booktabs}.",
    ]
    return _render(head, body, fmt, notes)


# Each table: (writer(runs, fmt), has_data(runs), reason when it has none).
TABLES: dict[str, tuple[Callable[..., str], Callable[[Sequence[Run]], bool], str]] = {
    "accuracy_change": (
        accuracy_change_table,
        lambda rs: any(r.accuracy_change(t) is not None for r in rs for t in r.tasks),
        "no run has a task evaluated at two iterations",
    ),
    "paired_changes": (
        paired_change_table,
        lambda rs: any(r.paired_tasks for r in rs),
        "no run has a task evaluated twice with per-example results",
    ),
    "arm_comparison": (
        arm_comparison_table,
        lambda rs: bool(arm_pairs(rs)),
        "no two runs of one seed evaluated a task last at the same iteration on the same examples",
    ),
    "seeds": (
        seed_table,
        lambda rs: any(len(g) > 1 for g in seed_groups(rs).values()),
        "no arm has runs of several seeds",
    ),
}


def write_tables(
    runs: Sequence[Run],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write every table (or `names`) the runs have data for as out/<name>.md and .tex."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES if names is None else names:
        table, has_data, reason = TABLES[name]
        if not has_data(runs):
            log(f"skipped {name}: {reason}")
            continue
        for fmt, ext in (("markdown", "md"), ("latex", "tex")):
            path = out / f"{name}.{ext}"
            path.write_text(table(runs, fmt=fmt))
            written.append(path)
            log(f"wrote {path}")
    return written


def write_figures(
    workdirs: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    toy: bool = True,
    log: Callable[[str], None] = print,
    dpi: int = 120,
) -> list[Path]:
    """Write every figure (or `names`) the runs have data for as out/<name>.png, and every
    table (or those in `names`) as out/<name>.md and out/<name>.tex."""
    runs = load_runs(workdirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    choices = [*FIGURES, "toy_random_walk", *TABLES]
    if names is None:
        wanted = list(FIGURES) + (["toy_random_walk"] if toy else []) + list(TABLES)
    else:
        wanted = list(names)
    unknown = [n for n in wanted if n not in choices]
    if unknown:
        raise ValueError(f"unknown figures {unknown}; choose from {choices}")
    written = []
    for name in wanted:
        if name in TABLES:
            written += write_tables(runs, out, names=[name], log=log)
            continue
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
