"""A roofline for one decode step of ES generation on an accelerator: full vs low-rank noise.

    python benchmarks/roofline.py [--model qwen2.5-3b-instruct] [--population 30]
        [--prompts 200] [--prompt-tokens 150] [--new-tokens 1024] [--devices 8] [--rank 4]
        [--hbm-tb-s 4.8] [--tflops 989]

Arithmetic, not a measurement: the HBM bytes and FLOPs of one decode step (one new token for
every member's every prompt) with the members spread evenly over --devices, and the time each
would take at the device's HBM bandwidth and dense bfloat16 matmul peak (defaults: an H200's
4.8 TB/s and 989 TFLOP/s). Weights and the KV cache in bfloat16; the cache at the mean
context of a generation (prompt + half the new tokens).

- Full rank: every member has its own perturbed copy of the weights, so a decode step reads
  members x weights.
- Low rank: the members of a device decode as one batch over one copy of the weights and
  read their factors, (m + n) r per matrix each.

Both read every row's KV cache and do the same matmul FLOPs (low rank adds 2 r (m + n) per
matrix and row). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math

from esawd import models


def matrices(config) -> list[tuple[int, int, int]]:
    """(m, n, count) of every weight matrix one token passes through: layers, embedding, head."""
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    layer = [(c.d_model, q, 2), (c.d_model, kv, 2), (c.d_model, c.d_ff, 2), (c.d_ff, c.d_model, 1)]
    out = [(m, n, k * c.n_layers) for m, n, k in layer]
    out.append((c.vocab_size, c.d_model, 1 if c.tie_embeddings else 2))
    return out


def step(config, *, members: int, rows: int, ctx: float, rank: int, hbm: float, peak: float):
    """Bytes, FLOPs and bound times of one decode step on one device."""
    c = config
    weights = c.num_params() * 2  # bfloat16
    kv = rows * ctx * 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2
    mats = matrices(config)
    per_row = 2 * sum(m * n * k for m, n, k in mats if (m, n) != (c.vocab_size, c.d_model))
    per_row += 2 * c.vocab_size * c.d_model  # the head (the embedding lookup is a gather)
    attn = 4 * c.n_layers * c.n_heads * c.head_dim * ctx
    flops = rows * (per_row + attn)
    if rank:
        factors = members * rank * 2 * sum((m + n) * k for m, n, k in mats)
        read = weights + factors + kv
        flops += rows * 2 * rank * sum((m + n) * k for m, n, k in mats)
    else:
        read = members * weights + kv
    t_mem, t_flop = read / hbm, flops / peak
    return {"bytes": read, "kv_bytes": kv, "flops": flops, "memory_s": t_mem,
            "compute_s": t_flop, "bound_s": max(t_mem, t_flop),
            "bytes_per_token": read / rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-3b-instruct", choices=sorted(models.PRESETS))
    parser.add_argument("--population", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--hbm-tb-s", type=float, default=4.8)
    parser.add_argument("--tflops", type=float, default=989.0)
    args = parser.parse_args()
    config = models.PRESETS[args.model][1]
    members = math.ceil(args.population / args.devices)
    rows = members * args.prompts
    ctx = args.prompt_tokens + args.new_tokens / 2
    kw = dict(members=members, rows=rows, ctx=ctx, hbm=args.hbm_tb_s * 1e12,
              peak=args.tflops * 1e12)  # fmt: skip
    full = step(config, rank=0, **kw)
    low = step(config, rank=args.rank, **kw)
    print(f"{args.model}: {config.num_params() / 1e9:.2f}B params, N={args.population} over "
          f"{args.devices} device(s) ({members} members, {rows} rows each), mean context "
          f"{ctx:.0f} tokens, rank {args.rank}")  # fmt: skip
    print("| | HBM read per step | per decoded token | KV cache part | FLOPs | memory time | "
          "compute time | bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("full rank", full), (f"low rank (r={args.rank})", low)):
        print(f"| {name} | {r['bytes'] / 1e9:.1f} GB | {r['bytes_per_token'] / 1e6:.1f} MB | "
              f"{r['kv_bytes'] / r['bytes']:.0%} | {r['flops'] / 1e12:.1f} T | "
              f"{r['memory_s'] * 1e3:.1f} ms | {r['compute_s'] * 1e3:.1f} ms | "
              f"{r['bound_s'] * 1e3:.1f} ms |")  # fmt: skip
    print(f"low rank bound: {full['bound_s'] / low['bound_s']:.2f}x faster per decode step")
    print(json.dumps({"model": args.model, "population": args.population, "prompts": args.prompts,
                      "devices": args.devices, "rank": args.rank, "mean_context": ctx,
                      "full": full, "low": low}))  # fmt: skip


if __name__ == "__main__":
    main()
