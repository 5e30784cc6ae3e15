"""Time and peak memory of the fused ES + AWD step on a SmolLM2-135M-shaped pytree.

    python benchmarks/update_bench.py [--population 30] [--repeats 3] [--ranks 1,4,16]

Runs the step with AWD off and with L2 AWD (anchor streamed from pinned host memory) side by
side in one process and prints seconds per step, the extra resident memory at the peak, and
the AWD overhead ratio; then the L2 step with low-rank noise at each of --ranks (one
[m, N r] x [N r, n] matmul per matrix instead of N full draws) and its speed-up over full
rank (goal >= 10x at N = 30). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from esawd import es

# SmolLM2-135M: vocab 49152, d_model 576, 30 layers, 9 query / 3 kv heads of 64, MLP 1536,
# tied embeddings.
V, D, L, H, KV, HD, F = 49152, 576, 30, 9, 3, 64, 1536


def smollm2_shaped_params(seed: int = 0) -> dict:
    """A random float32 pytree with SmolLM2-135M's leaf shapes (stacked layers)."""
    shapes = {
        "embed": (V, D),
        "final_norm": (D,),
        "layers": {
            "input_norm": (L, D),
            "post_attn_norm": (L, D),
            "attn": {
                "q_proj": (L, D, H * HD),
                "k_proj": (L, D, KV * HD),
                "v_proj": (L, D, KV * HD),
                "o_proj": (L, H * HD, D),
            },
            "mlp": {"gate_proj": (L, D, F), "up_proj": (L, D, F), "down_proj": (L, F, D)},
        },
    }
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    return jax.tree.map(
        lambda s: 0.02 * jax.random.normal(next(keys), s, jnp.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return -1


def reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets VmHWM (the peak resident set) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_step(params, anchor, seeds, coeffs, *, kind, lam, alpha, rank=0):
    """Seconds and extra peak RSS of one es_step."""
    base = rss_bytes("VmRSS")
    reset_peak_rss()
    t0 = time.perf_counter()
    params, _ = es.es_step(
        params, anchor, seeds, coeffs, alpha=alpha, population_size=len(seeds), lam=lam,
        kind=kind, rank=rank,
    )  # fmt: skip
    jax.block_until_ready(params)
    return params, time.perf_counter() - t0, rss_bytes("VmHWM") - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=5e-4)
    parser.add_argument("--lam", type=float, default=10.0)
    parser.add_argument("--ranks", default="1,4,16", help="low-rank steps to time ('' for none)")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",") if r]

    params = smollm2_shaped_params()
    n_params = sum(x.size for x in jax.tree.leaves(params))
    anchor = es.host_anchor(params)
    seeds = es.iteration_seeds(base_seed=0, iteration=1, population_size=args.population)
    coeffs = es.normalize_rewards(np.random.default_rng(0).normal(size=args.population))
    print(
        f"params: {n_params / 1e6:.1f}M float32 ({n_params * 4 / 2**20:.0f} MiB), "
        f"N={args.population}, devices={jax.devices()}, cpus={os.cpu_count()}, "
        f"loadavg={os.getloadavg()[0]:.2f}"
    )

    configs = {"awd_off": ("none", 0.0, 0), "awd_l2": ("l2", args.lam, 0),
               "awd_l1": ("l1", 0.01, 0)}  # fmt: skip
    configs.update({f"awd_l2_rank{r}": ("l2", args.lam, r) for r in ranks})
    times = {name: [] for name in configs}
    peaks = {name: [] for name in configs}
    # One warm-up (compile) step per config, then the configs interleaved so that load
    # changes on a shared machine hit all of them alike.
    for r in range(args.repeats + 1):
        for name, (kind, lam, rank) in configs.items():
            params, sec, peak = timed_step(
                params, anchor, seeds, coeffs, kind=kind, lam=lam, alpha=args.alpha, rank=rank
            )
            if r > 0:
                times[name].append(sec)
                peaks[name].append(peak)
    results = {}
    for name in configs:
        sec, peak = float(np.median(times[name])), max(peaks[name])
        results[name] = {"seconds": sec, "extra_peak_rss_mib": peak / 2**20}
        print(
            f"{name:8s} {sec:8.2f} s/step   extra peak RSS {peak / 2**20:8.1f} MiB   "
            f"noise {args.population * n_params / sec / 1e6:6.0f} M samples/s"
        )
    for name in ("awd_l2", "awd_l1"):
        ratio = results[name]["seconds"] / results["awd_off"]["seconds"]
        results[name]["overhead_ratio"] = ratio
        print(f"{name} overhead: {100 * (ratio - 1):+.2f}% of the update step")
    for r in ranks:
        name = f"awd_l2_rank{r}"
        speedup = results["awd_l2"]["seconds"] / results[name]["seconds"]
        results[name]["speedup_vs_full_rank"] = speedup
        print(f"rank {r:3d}: {speedup:6.1f}x faster than the full-rank step (goal >= 10x)")
    print(
        json.dumps(
            {
                "num_params": n_params,
                "population": args.population,
                "loadavg": os.getloadavg()[0],
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "cpu": next(
                    (
                        ln.split(":", 1)[1].strip()
                        for ln in open("/proc/cpuinfo")
                        if ln.startswith("model name")
                    ),
                    "unknown",
                ),  # fmt: skip
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
