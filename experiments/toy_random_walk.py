"""Draw the toy random-walk figure: unconstrained drift vs iteration for N and AWD.

python -m experiments.toy_random_walk --out docs/toy_random_walk.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")

from esawd import figures  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/toy_random_walk.png")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--dim", type=int, default=2000)
    parser.add_argument("--constrained", type=int, default=10)
    args = parser.parse_args(argv)
    fig = figures.plot_toy_random_walk(
        iterations=args.iterations, dim=args.dim, constrained=args.constrained
    )
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
