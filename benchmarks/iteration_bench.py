"""Seconds per ES + AWD iteration on SmolLM2-135M-Instruct (Countdown prompts), by phase.

    python benchmarks/iteration_bench.py --population 8 --prompts 32 --max-new-tokens 128 \\
        [--fixed-length] [--data-dir DIR] [--iterations 1]

Runs the trainer's own pieces: population evaluation (perturb + greedy generation on device,
decoding + reward on the host, overlapped), then the fused ES + L2 AWD step. One warm-up
iteration compiles; the measured iterations follow. Separate timings of a lone perturbation
and of the step without AWD give the phase breakdown. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from esawd import es, models, scoring, tasks
from esawd.es import method as es_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--fixed-length", action="store_true", help="ignore EOS")
    parser.add_argument("--data-dir", default="", help="folder with countdown/ (else procedural)")
    parser.add_argument("--iterations", type=int, default=1, help="measured iterations")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lam", type=float, default=10.0)
    args = parser.parse_args()

    task = tasks.get_task("countdown")
    if args.data_dir:
        examples = task.load("train", args.data_dir)[: args.prompts]
    else:
        examples = task.generate(args.prompts, seed=0)
    model = models.load(args.model)
    prompts = scoring.encode(task, examples, model.tokenizer)
    mesh = es.population_mesh()
    params = jax.device_put(
        model.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    anchor = es.host_anchor(params)
    generate_fn = es_method.make_generate_fn(
        model.config,
        prompts.ids,
        prompts.mask,
        max_new_tokens=args.max_new_tokens,
        ignore_eos=args.fixed_length,
    )

    def score_fn(tokens, lengths):
        return scoring.score(task, model.tokenizer, tokens, lengths, examples)

    print(
        f"model {args.model}: {model.config.num_params() / 1e6:.1f}M params; N={args.population},"
        f" {args.prompts} prompts x {args.max_new_tokens} new tokens"
        f"{' (fixed length)' if args.fixed_length else ''}; prompt width {prompts.ids.shape[1]};"
        f" devices {jax.devices()}; loadavg {os.getloadavg()[0]:.2f}"
    )

    rows = []
    for it in range(args.iterations + 1):
        seeds = np.asarray(
            es.iteration_seeds(base_seed=0, iteration=it + 1, population_size=args.population)
        )
        t0 = time.perf_counter()
        member = es_method.population_fitness(
            generate_fn,
            params,
            seeds,
            score_fn,
            sigma=1e-3,
            antithetic=False,
            mesh=mesh,
            members_per_batch=1,
            noise_sharing="none",
        )
        t1 = time.perf_counter()
        coeffs = es.normalize_rewards(member["reward"] + 1e-3 * np.arange(args.population))
        params, _ = es.es_step(
            params, anchor, seeds, coeffs, alpha=5e-4, population_size=args.population,
            lam=args.lam, kind="l2",
        )  # fmt: skip
        jax.block_until_ready(params)
        t2 = time.perf_counter()
        params, _ = es.es_step(
            params, None, seeds, coeffs, alpha=5e-4, population_size=args.population
        )  # the same update without AWD, for the AWD share
        jax.block_until_ready(params)
        t3 = time.perf_counter()
        perturbed = es.perturb(params, int(seeds[0]), sigma=1e-3)
        jax.block_until_ready(perturbed)
        del perturbed
        t4 = time.perf_counter()
        tokens = float(member["tokens"].sum()) * args.prompts
        row = {
            "seconds_per_iteration": (t1 - t0) + (t2 - t1),
            "population_seconds": t1 - t0,
            "perturb_seconds": (t4 - t3) * args.population,
            "score_seconds": float(member["score_seconds"]),
            "update_awd_seconds": t2 - t1,
            "update_seconds": t3 - t2,
            "awd_seconds": (t2 - t1) - (t3 - t2),
            "generated_tokens": tokens,
            "tokens_per_second": tokens / (t1 - t0),
        }
        # Scoring overlaps the next member's generation, so it is not subtracted here.
        row["generate_seconds"] = row["population_seconds"] - row["perturb_seconds"]
        label = "warm-up" if it == 0 else f"iteration {it}"
        print(
            f"{label:12s} {row['seconds_per_iteration']:7.2f} s = population "
            f"{row['population_seconds']:.2f} (perturb ~{row['perturb_seconds']:.2f}, generate "
            f"~{row['generate_seconds']:.2f}, host scoring {row['score_seconds']:.2f} overlapped)"
            f" + update "
            f"{row['update_awd_seconds']:.2f} (AWD ~{row['awd_seconds']:.2f}); "
            f"{row['tokens_per_second']:.0f} generated tokens/s"
        )
        if it > 0:
            rows.append(row)
    summary = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    summary.update(
        population=args.population,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        fixed_length=args.fixed_length,
        loadavg=os.getloadavg()[0],
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
