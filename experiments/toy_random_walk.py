"""Draw the toy random-walk figure: unconstrained drift vs iteration for N and AWD.

python -m experiments.toy_random_walk --out docs/toy_random_walk.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from esawd import toy  # noqa: E402

RUNS = [  # (label, population_size, lam, kind)
    ("ES, N=30", 30, 0.0, "none"),
    ("ES, N=128", 128, 0.0, "none"),
    ("ES, N=256", 256, 0.0, "none"),
    ("ES + AWD (L2, lam=10), N=30", 30, 10.0, "l2"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/toy_random_walk.png")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--dim", type=int, default=2000)
    parser.add_argument("--constrained", type=int, default=10)
    args = parser.parse_args(argv)
    common = dict(num_iterations=args.iterations, dim=args.dim, num_constrained=args.constrained)

    fig, (ax_drift, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, n, lam, kind) in enumerate(RUNS):
        run = toy.run_random_walk(population_size=n, lam=lam, kind=kind, **common)
        color = f"C{i}"
        ax_drift.plot(run.iterations, run.drift_perp, color=color, label=label)
        pred = toy.predicted_drift(
            run.iterations,
            population_size=n,
            dim=args.dim,
            num_constrained=args.constrained,
            alpha=5e-4,
            lam=lam,
        )
        ax_drift.plot(run.iterations, pred, color=color, ls="--", lw=1)
        ax_loss.semilogy(run.iterations, run.loss, color=color, label=label)
    ax_drift.set(
        xlabel="iteration t",
        ylabel=r"$\|P_\perp(\theta_t - \theta_0)\|$",
        title="Drift in directions the reward ignores (dashed: theory)",
    )
    ax_loss.set(xlabel="iteration t", ylabel="constrained loss", title="Target reward is learnt")
    ax_drift.legend(fontsize=8)
    fig.suptitle(
        f"Toy: reward depends on {args.constrained} of {args.dim} parameters "
        "(sigma=1e-3, alpha=5e-4)"
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
