"""Evaluate run directories over training: task accuracy, KL(base || tuned), weight drift.

    python -m experiments.evaluate --workdir runs/a [runs/b ...] \\
        --tasks target,piqa,arc_challenge --data_dir ../shared/data \\
        --num_examples 200 --max_new_tokens target=128,piqa=8,arc_challenge=256 --stride 10

    # the reference's whole protocol (evaluation/run_forgetting.sh + run_kl_divergence.sh)
    python -m experiments.evaluate --workdir runs/a --data_dir ../shared/data --protocol paper

Writes forgetting.jsonl, kl.jsonl and weight_drift.jsonl into each run directory (see
`esawd.analysis.analyze_run`); running it again skips what is already written. `target` stands
for the run's own target task (a user task too: its path, checker and prompts come from the
run's config.json, and its rows are named by its task.name, e.g. `jsonl`). Your own tasks as
prior tasks: `jsonl:PATH` (rows named so; checker and prompts from the --jsonl_* options, the
same for every such task) or `package.module:factory` (docs/tasks.md, "Your own task"):

    python -m experiments.evaluate --workdir runs/a --tasks target,piqa,jsonl:data/qa \\
        --jsonl_checker numeric --jsonl_template 'Q: {question}'

Prior tasks with fixed options can also be scored without generation, by option log-likelihood
(lm-evaluation-harness's acc_norm; rows named `piqa:ll`), the measure that sees what a small
model knows when its generated answers do not follow the format:

    python -m experiments.evaluate --workdir runs/a --tasks piqa --max_new_tokens 8 \
        --likelihood piqa=1000,arc_challenge=1000 --data_dir ../shared/data

ES runs can be evaluated at any iteration (replayed from the ES log between checkpoints); GRPO
runs at their checkpoints.

`--protocol` picks the defaults of the options it covers (`PROTOCOLS`); an option given on
the command line wins over it. `ours`: the run's target and the four prior tasks at every
checkpoint. `paper` (`esawd.analysis.forgetting.PAPER_PROTOCOL`): all seven paper tasks at
iteration 0, every 25th and the last, at most 2048 examples and 1024 new tokens a task, KL on
the reference's 50 prompts with 256-token samples.
"""

from __future__ import annotations

import argparse
import sys

from esawd import analysis, tasks
from esawd.analysis.forgetting import JSONL_OPTIONS, KL_SELECTIONS, PAPER_PROTOCOL

# The defaults of the options a protocol covers; each is overridden by its command-line flag.
PROTOCOLS: dict[str, dict] = {
    "ours": {
        "tasks": ("target", *tasks.PRIOR_TASKS),
        "num_examples": tasks.EVAL_SUBSET_SIZE,
        "max_new_tokens": 1024,
        "stride": 0,
        "kl_prompts": 50,
        "kl_max_new_tokens": 256,
        "kl_selection": "reference",
    },
    "paper": PAPER_PROTOCOL,
}


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


def parse_likelihood(text: str) -> dict[str, int]:
    """'piqa=1000,arc_challenge=500': tasks scored by option log-likelihood, examples each."""
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"--likelihood {text!r}: use task=examples pairs, e.g. "
                "'piqa=1000,arc_challenge=500'"
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


def settings_for(
    args: argparse.Namespace, config: dict, iterations: tuple[int, ...] = ()
) -> analysis.AnalysisSettings:
    """The settings for one run: each option as given, else the protocol's value."""
    values = {
        key: default if getattr(args, key) is None else getattr(args, key)
        for key, default in PROTOCOLS[args.protocol].items()
    }
    target = config.get("task", {}).get("name", "")
    names = values["tasks"]
    names = resolve_tasks(names.split(",") if isinstance(names, str) else list(names), target)
    return analysis.AnalysisSettings(
        tasks=names,
        data_dir=args.data_dir,
        num_examples=values["num_examples"],
        max_new_tokens=resolve_tokens(values["max_new_tokens"], names, target),
        likelihood=args.likelihood,
        batch_size=args.batch_size,
        stride=values["stride"],
        iterations=iterations,
        kl=not args.no_kl,
        kl_prompts=values["kl_prompts"],
        kl_max_new_tokens=values["kl_max_new_tokens"],
        kl_seed=args.kl_seed,
        kl_selection=values["kl_selection"],
        drift=not args.no_drift,
        model_cache_dir=args.model_cache_dir,
        jsonl_options={key: getattr(args, f"jsonl_{key}") for key in JSONL_OPTIONS},
    )


def parser() -> argparse.ArgumentParser:
    """The command line (options a protocol covers default to None: `settings_for` fills them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", nargs="+", required=True, help="run directories")
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="ours",
        help="defaults of --tasks, --num_examples, --max_new_tokens, --stride and the KL "
        "options: ours, or paper (the reference's evaluation)",
    )
    p.add_argument(
        "--tasks",
        help=f"comma-separated; 'target' = the run's task; any of {','.join(tasks.TASK_NAMES)}, "
        "jsonl:PATH (your data; see --jsonl_*) or package.module:factory (your task object) "
        "(default: target and the four prior tasks; paper: the seven paper tasks)",
    )
    for key, what in (
        ("checker", "exact (default), numeric[:tol], choice, regex:<pattern>, module:function"),
        ("system_prompt", "a system message before each prompt"),
        ("template", "str.format over a row's fields, for rows without prompt/messages"),
        ("prefill", "the start of the assistant's reply"),
    ):
        p.add_argument(f"--jsonl_{key}", default="", help=f"jsonl:PATH tasks: {what}")
    p.add_argument("--data_dir", default="", help="folder with <task>/ (default: the run's)")
    p.add_argument("--num_examples", type=int, help="per task, at most (default 2048)")
    p.add_argument("--max_new_tokens", type=parse_tokens, help="default 1024")
    p.add_argument(
        "--likelihood", type=parse_likelihood, default={},
        help="tasks also scored by option log-likelihood, with examples each: piqa=1000,...",
    )  # fmt: skip
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--stride", type=int, help="every k-th iteration (0: checkpoints; paper: 25)")
    p.add_argument("--iterations", default="", help="explicit iterations, e.g. 0,10,30")
    p.add_argument("--kl_prompts", type=int, help="default 50")
    p.add_argument("--kl_max_new_tokens", type=int, help="default 256")
    p.add_argument(
        "--kl_selection",
        choices=KL_SELECTIONS,
        help="reference (default): random.Random(2357).sample of the whole evaluation split; "
        "first: the first kl_prompts accuracy examples",
    )
    p.add_argument("--kl_seed", type=int, default=0)
    p.add_argument("--no_kl", action="store_true", help="skip KL(base || tuned)")
    p.add_argument("--no_drift", action="store_true", help="skip weight drift")
    p.add_argument("--fresh", action="store_true", help="delete earlier evaluation rows first")
    p.add_argument("--model_cache_dir", default="")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    try:
        iterations = tuple(int(x) for x in args.iterations.split(",") if x.strip())
    except ValueError:
        p.error(f"--iterations {args.iterations!r}: use comma-separated integers, e.g. 0,10,30")
    try:
        for workdir in args.workdir:
            settings = settings_for(args, analysis.read_run_config(workdir), iterations)
            if args.fresh:
                analysis.clear_analysis(workdir)
            analysis.analyze_run(workdir, settings, progress=not args.no_progress)
    except (analysis.AnalysisError, FileNotFoundError) as e:
        sys.exit(f"evaluate: {e}")


if __name__ == "__main__":
    main()
