"""Run the arms of configs/findings.py and their prior-task evaluations; collect the rows.

    python -m experiments.findings --data_dir DATA --out runs/findings \\
        --results docs/results/findings [--arms es_n4,awd_n4] [--seeds 0,1] [--tasks piqa]

For each arm and seed, in order: train (or resume, or skip a finished run), evaluate the
prior tasks at t = 0 and t = T (`esawd.analysis.analyze_run`; an evaluation resumes where it
stopped), then copy the run's rows (no checkpoints) to `<results>/<arm>_s<seed>/`. The prior
tasks are evaluated twice over: generated answers (`--tasks`, the paper's measure, with KL on
their prompts) and option log-likelihoods (`--likelihood`, `esawd.analysis.likelihood`). The
base model's rows at t = 0 are the same for every arm (same theta_0, same examples), so they
are evaluated once and copied into every other run under `--out` before its evaluation.
Interrupt it at any point and run it again: it continues. The figures and tables come from
the copied rows:

    python -m experiments.figures --workdirs <results>/*_s* --out <results> --no_toy \
        --only findings,paired_changes,arm_comparison,seeds

(`OUTPUTS`; `result_workdirs(results)` lists the runs in the design's order.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from configs import findings
from esawd import analysis, devices, settings
from esawd.analysis import likelihood
from esawd.rundir import JsonlLog, RunDir
from esawd.train import train
from experiments.evaluate import parse_likelihood

# What is copied to the results folder: every row a figure or table needs, no weights.
ROW_FILES = (
    "config.json", "metrics.jsonl", "es_log.jsonl", "summary.json", "forgetting.jsonl",
    "kl.jsonl", "weight_drift.jsonl", "evaluate.json",
)  # fmt: skip
# What docs/results.md shows of the copied rows: the `experiments.figures --only` names.
OUTPUTS = ("findings", "paired_changes", "arm_comparison", "seeds")
# Prior-task generation budgets: PIQA and ARC answer with a letter or a number after a short
# rationale at most; MMLU-Pro likewise (docs/results.md, "The three findings").
MAX_NEW_TOKENS = {"piqa": 8, "arc_challenge": 128, "mmlu_pro": 128}
# Prior tasks scored by option log-likelihood (`esawd.analysis.likelihood`), examples each: the
# measure that sees what the 135M model knows (its generated PIQA answers are mostly "1.").
LIKELIHOOD = {"piqa": 1000, "arc_challenge": 500}


def analysis_settings(
    data_dir: str, tasks: tuple[str, ...], num_examples: int, ll: dict[str, int] | None = None
):
    """The prior-task evaluation of every arm: t = 0 and t = T, generated answers of `tasks`
    and option likelihoods of `ll` (default LIKELIHOOD), KL and drift."""
    return analysis.AnalysisSettings(
        tasks=tasks, data_dir=data_dir, num_examples=num_examples,
        likelihood=dict(LIKELIHOOD if ll is None else ll),
        max_new_tokens={t: MAX_NEW_TOKENS[t] for t in tasks}, batch_size=64,
        iterations=(0, findings.ITERATIONS), kl=True, kl_prompts=32, kl_max_new_tokens=64,
    )  # fmt: skip


def share_base_rows(workdir: Path, others: list[Path], wanted: dict) -> int:
    """Copy the t = 0 forgetting rows another arm evaluated with the same settings (`wanted`,
    an evaluation's row settings as evaluate.json stores them; a task's row also needs the
    same max_new_tokens, a likelihood-scored task's row the same number of examples) into
    `workdir`'s log: the same theta_0 on the same examples. Returns how many were copied."""
    mine = JsonlLog(workdir / analysis.FORGETTING_FILE)
    have = {r["task"] for r in mine.rows() if r["iteration"] == 0}
    wanted = json.loads(json.dumps(wanted))  # as evaluate.json stores it
    tokens = wanted.pop("max_new_tokens")
    counts = wanted.pop("likelihood", {})
    copied = 0
    for other in others:
        stored = other / "evaluate.json"
        if other == workdir or not stored.exists():
            continue
        theirs = json.loads(stored.read_text())
        their_tokens = theirs.pop("max_new_tokens", {})
        their_counts = theirs.pop("likelihood", {})
        if any(theirs.get(k) != v for k, v in wanted.items()):
            continue
        for row in JsonlLog(other / analysis.FORGETTING_FILE).rows():
            task = row["task"]
            if task.endswith(likelihood.SUFFIX):
                name = likelihood.base_task(task)
                same = name in counts and their_counts.get(name) == counts[name]
            else:
                same = task in tokens and their_tokens.get(task) == tokens[task]
            if row["iteration"] == 0 and same and task not in have:
                mine.append(row)
                have.add(task)
                copied += 1
    return copied


def result_workdirs(results: str | Path) -> list[Path]:
    """The copied runs under `results` in the design's order (configs/findings.py ARMS, then
    seed): the order the arm comparison pairs them in."""
    found = [d for d in Path(results).iterdir() if (d / "config.json").exists()]
    order = {arm: i for i, arm in enumerate(findings.ARMS)}

    def key(d: Path) -> tuple[int, int]:
        arm, seed = findings.parse(d.name)
        return order[arm], seed

    return sorted(found, key=key)


def collect(workdir: Path, results: Path) -> None:
    """Copy the run's rows (ROW_FILES that exist) to `results`."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ROW_FILES:
        if (workdir / name).exists():
            shutil.copy2(workdir / name, results / name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="folder with the prior tasks' data")
    p.add_argument("--out", default="runs/findings", help="the run directories")
    p.add_argument("--results", default="docs/results/findings", help="where rows are copied")
    p.add_argument("--arms", default=",".join(findings.ARMS), help="comma-separated arms")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--tasks", default=",".join(findings.PRIOR_TASKS), help="prior tasks")
    p.add_argument("--num_examples", type=int, default=2048, help="per prior task, at most")
    p.add_argument(
        "--likelihood", type=parse_likelihood, default=dict(LIKELIHOOD),
        help="prior tasks scored by option log-likelihood, examples each (task=N,...; '' none)",
    )  # fmt: skip
    p.add_argument("--no_eval", action="store_true", help="train only")
    a = p.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in findings.ARMS]
    if unknown:
        p.error(f"--arms {unknown}: choose from {list(findings.ARMS)}")
    tasks = tuple(x for x in a.tasks.split(",") if x)
    out, results = Path(a.out), Path(a.results)
    runs = [(arm, int(seed)) for seed in a.seeds.split(",") for arm in arms]
    workdirs = [out / f"{arm}_s{seed}" for arm, seed in runs]
    devices.set_cpu_devices(2)  # the ES arms' distributed.cpu_devices, once per process
    print(f"findings: {len(runs)} runs on {devices.machine()}", flush=True)
    for (arm, seed), workdir in zip(runs, workdirs, strict=True):
        c = findings.get_config(f"{arm}_s{seed}")
        c.workdir = str(workdir)
        t0 = time.perf_counter()
        train(settings.from_config(c))
        trained = time.perf_counter() - t0
        if not a.no_eval:
            evaluation = analysis_settings(a.data_dir, tasks, a.num_examples, a.likelihood)
            # every run under --out, also those of earlier invocations
            others = sorted(d for d in out.iterdir() if d.is_dir())
            shared = share_base_rows(workdir, others, evaluation.row_settings())
            analysis.analyze_run(workdir, evaluation)
            RunDir(workdir).close()
            print(f"{workdir.name}: base rows shared {shared}", flush=True)
        collect(workdir, results / workdir.name)
        total = time.perf_counter() - t0
        print(f"{workdir.name}: done in {total:.0f} s (training and its held-out evaluations "
              f"{trained:.0f} s); rows in {results / workdir.name}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
