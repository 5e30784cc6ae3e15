"""Evaluate run directories over training: task accuracy, KL(base || tuned), weight drift.

    python -m experiments.evaluate --workdir runs/a [runs/b ...] \\
        --tasks target,piqa,arc_challenge --data_dir ../shared/data \\
        --num_examples 200 --max_new_tokens target=128,piqa=8,arc_challenge=256 --stride 10

Writes forgetting.jsonl, kl.jsonl and weight_drift.jsonl into each run directory (see
`esawd.analysis.analyze_run`); running it again skips what is already written. `target` stands
for the run's own target task. ES runs can be evaluated at any iteration (replayed from the ES
log between checkpoints); GRPO runs at their checkpoints.
"""

from __future__ import annotations

import argparse
import sys

from esawd import analysis, tasks


def parse_tokens(text: str) -> int | dict[str, int]:
    """'1024' or 'target=128,piqa=8' (per task; 'default=N' covers the tasks not named)."""
    if text.strip().isdigit():
        return int(text)
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"--max_new_tokens {text!r}: use a number or task=number pairs, e.g. "
                "'target=128,piqa=8,default=256'"
            )
        out[name.strip()] = int(value)
    return out


def resolve_tasks(names: list[str], target: str) -> tuple[str, ...]:
    """The task list with 'target' replaced by the run's target task, without duplicates."""
    out = []
    for name in names:
        name = target if name == "target" else name
        if name not in out:
            out.append(name)
    return tuple(out)


def resolve_tokens(tokens: int | dict[str, int], names: tuple[str, ...], target: str):
    if isinstance(tokens, int):
        return tokens
    table = {(target if k == "target" else k): v for k, v in tokens.items()}
    default = table.pop("default", None)
    missing = [t for t in names if t not in table and default is None]
    if missing:
        raise analysis.AnalysisError(
            f"--max_new_tokens names no value for {', '.join(missing)}; add them or default=N."
        )
    return {t: table.get(t, default) for t in names}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", nargs="+", required=True, help="run directories")
    p.add_argument(
        "--tasks",
        default="target," + ",".join(tasks.PRIOR_TASKS),
        help=f"comma-separated; 'target' = the run's task; any of {','.join(tasks.TASK_NAMES)}",
    )
    p.add_argument("--data_dir", default="", help="folder with <task>/ (default: the run's)")
    p.add_argument("--num_examples", type=int, default=tasks.EVAL_SUBSET_SIZE)
    p.add_argument("--max_new_tokens", type=parse_tokens, default=parse_tokens("1024"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--stride", type=int, default=0, help="every k-th iteration (0: checkpoints)")
    p.add_argument("--iterations", default="", help="explicit iterations, e.g. 0,10,30")
    p.add_argument("--kl_prompts", type=int, default=50)
    p.add_argument("--kl_max_new_tokens", type=int, default=256)
    p.add_argument("--kl_seed", type=int, default=0)
    p.add_argument("--no_kl", action="store_true", help="skip KL(base || tuned)")
    p.add_argument("--no_drift", action="store_true", help="skip weight drift")
    p.add_argument("--fresh", action="store_true", help="delete earlier evaluation rows first")
    p.add_argument("--model_cache_dir", default="")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    try:
        iterations = tuple(int(x) for x in args.iterations.split(",") if x.strip())
    except ValueError:
        p.error(f"--iterations {args.iterations!r}: use comma-separated integers, e.g. 0,10,30")
    try:
        for workdir in args.workdir:
            config = analysis.read_run_config(workdir)
            target = config.get("task", {}).get("name", "")
            names = resolve_tasks(args.tasks.split(","), target)
            settings = analysis.AnalysisSettings(
                tasks=names,
                data_dir=args.data_dir,
                num_examples=args.num_examples,
                max_new_tokens=resolve_tokens(args.max_new_tokens, names, target),
                batch_size=args.batch_size,
                stride=args.stride,
                iterations=iterations,
                kl=not args.no_kl,
                kl_prompts=args.kl_prompts,
                kl_max_new_tokens=args.kl_max_new_tokens,
                kl_seed=args.kl_seed,
                drift=not args.no_drift,
                model_cache_dir=args.model_cache_dir,
            )
            if args.fresh:
                analysis.clear_analysis(workdir)
            analysis.analyze_run(workdir, settings, progress=not args.no_progress)
    except (analysis.AnalysisError, FileNotFoundError) as e:
        sys.exit(f"evaluate: {e}")


if __name__ == "__main__":
    main()
