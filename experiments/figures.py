"""Draw the paper's figures from run directories (after `python -m experiments.evaluate`).

    python -m experiments.figures --workdirs runs/es_n4 runs/awd_n4 --out figures/

Writes target_vs_prior.png (the paper's Figure 1a), three_tasks.png (one panel per target
task), influence.png (the paper's Figure 3: change in prior-task accuracy, ES vs GRPO, by
target, model family and size), forgetting_curves.png, lambda_ablation.png, weight_drift.png,
kl_heatmap.png, population_size.png, training_reward.png, learning_curves.png (reward per
iteration and per second, held-out accuracy, drift), toy_random_walk.png, and the
final-minus-initial accuracy table as accuracy_change.md and accuracy_change.tex; figures and
tables whose data no run has are skipped with the reason. See `esawd.figures` for each.
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")

from esawd import analysis, figures  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdirs", nargs="+", required=True, help="run directories")
    p.add_argument("--out", required=True, help="folder for the PNGs and tables")
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {[*figures.FIGURES, 'toy_random_walk', *figures.TABLES]}",
    )
    p.add_argument("--no_toy", action="store_true", help="skip the toy random-walk figure")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or None
    try:
        figures.write_figures(args.workdirs, args.out, names=names, toy=not args.no_toy)
    except (analysis.AnalysisError, ValueError) as e:
        sys.exit(f"figures: {e}")


if __name__ == "__main__":
    main()
