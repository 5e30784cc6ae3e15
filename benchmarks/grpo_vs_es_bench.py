"""Seconds per GRPO step vs seconds per ES + AWD iteration at the same number of sample
evaluations, side by side in one process (Schweighofer et al. 2026 report ES needing 3-5x
fewer node-hours than GRPO).

    python benchmarks/grpo_vs_es_bench.py --n 4 --prompts 8 --max-new-tokens 64 \\
        [--fixed-length] [--micro-batch 8] [--steps 1]

Both methods evaluate n x prompts samples per step: ES generates greedily for each of N = n
perturbed members on the prompts and takes the fused ES + L2 AWD step; GRPO samples a group of
n completions per prompt at temperature 1 and takes one AdamW update on all of them (one
mini-batch, gradients accumulated over micro-batches, k3 KL to theta_0). Each method runs one
warm-up step (compilation) and then `--steps` measured steps, alternating ES and GRPO so that
load changes on a shared machine hit both. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from esawd import es, grpo, models, scoring, tasks
from esawd.es import method as es_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="ES population N = GRPO group size")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--fixed-length", action="store_true", help="ignore EOS (equal tokens)")
    parser.add_argument("--micro-batch", type=int, default=8, help="GRPO sequences per gradient")
    parser.add_argument("--steps", type=int, default=1, help="measured steps of each method")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    task = tasks.get_task("countdown")
    examples = task.generate(args.prompts, seed=0)
    model = models.load(args.model)
    config, tokenizer = model.config, model.tokenizer
    prompts = scoring.encode(task, examples, tokenizer)
    print(
        f"model {args.model}: {config.num_params() / 1e6:.1f}M params; {args.n} x "
        f"{args.prompts} prompts = {args.n * args.prompts} samples per step, "
        f"{args.max_new_tokens} new tokens{' (fixed length)' if args.fixed_length else ''}; "
        f"prompt width {prompts.ids.shape[1]}; loadavg {os.getloadavg()[0]:.2f}"
    )

    # ---- ES: the trainer's population evaluation and fused ES + AWD step
    mesh = es.population_mesh(jax.devices()[:1])
    es_params = jax.device_put(model.params)
    anchor = es.host_anchor(es_params)
    generate_fn = es_method.make_generate_fn(
        config, prompts.ids, prompts.mask, max_new_tokens=args.max_new_tokens,
        ignore_eos=args.fixed_length,
    )  # fmt: skip

    def score_fn(tokens, lengths):
        return scoring.score(task, tokenizer, tokens, lengths, examples)

    def es_iteration(t: int) -> dict[str, float]:
        nonlocal es_params
        seeds = np.asarray(es.iteration_seeds(base_seed=0, iteration=t, population_size=args.n))
        t0 = time.perf_counter()
        member = es_method.population_fitness(
            generate_fn, es_params, seeds, score_fn, sigma=1e-3, antithetic=False, mesh=mesh,
            members_per_batch=1, noise_sharing="none",
        )  # fmt: skip
        t1 = time.perf_counter()
        coeffs = es.normalize_rewards(member["reward"] + 1e-3 * np.arange(args.n))
        es_params, _ = es.es_step(
            es_params, anchor, seeds, coeffs, alpha=5e-4, population_size=args.n, lam=10.0,
            kind="l2",
        )  # fmt: skip
        jax.block_until_ready(es_params)
        t2 = time.perf_counter()
        return {
            "seconds": t2 - t0,
            "generate_seconds": t1 - t0,
            "update_seconds": t2 - t1,
            "tokens": float(member["tokens"].sum()) * args.prompts,
        }

    # ---- GRPO: the trainer's rollout, scoring, advantages and update
    g_params = jax.device_put(model.params)
    ref_params = jax.device_put(model.params)
    optimizer = grpo.make_optimizer(learning_rate=1e-6)
    apply_fn = grpo.make_apply_fn(optimizer)
    opt_state = optimizer.init(g_params)
    ids = np.repeat(prompts.ids, args.n, axis=0)
    pmask = np.repeat(prompts.mask, args.n, axis=0)
    repeated = [e for e in examples for _ in range(args.n)]

    def grpo_step(t: int) -> dict[str, float]:
        nonlocal g_params, opt_state
        t0 = time.perf_counter()
        tokens, lengths = grpo.rollout(
            config, g_params, prompts.ids, prompts.mask, jax.random.key(t), group_size=args.n,
            max_new_tokens=args.max_new_tokens, batch_size=len(ids), ignore_eos=args.fixed_length,
        )  # fmt: skip
        t1 = time.perf_counter()
        scores = scoring.score(task, tokenizer, tokens, lengths, repeated)
        rewards = scores["reward"] + 1e-3 * np.arange(len(ids))  # a signal even at reward 0
        adv = np.asarray(grpo.group_advantages(rewards.reshape(-1, args.n))).reshape(-1)
        width = min(tokens.shape[1], -(-int(lengths.max()) // 64) * 64)
        mask = np.arange(width)[None, :] < lengths[:, None]
        batch = grpo.Rollout(ids, pmask, tokens[:, :width], mask, adv)
        t2 = time.perf_counter()
        g_params, opt_state, _ = grpo.update(
            config, g_params, opt_state, ref_params, batch, apply_fn=apply_fn,
            mini_batch_rows=len(ids), micro_batch_size=args.micro_batch, clip_eps=0.2,
            kl_coef=1e-3,
        )  # fmt: skip
        jax.block_until_ready(g_params)
        t3 = time.perf_counter()
        return {
            "seconds": t3 - t0,
            "generate_seconds": t1 - t0,
            "score_seconds": t2 - t1,
            "update_seconds": t3 - t2,
            "tokens": float(lengths.sum()),
        }

    es_rows, grpo_rows = [], []
    for t in range(args.steps + 1):
        e, g = es_iteration(t + 1), grpo_step(t + 1)
        label = "warm-up" if t == 0 else f"step {t}"
        print(
            f"{label:8s} ES {e['seconds']:7.2f} s (generate {e['generate_seconds']:.2f}, update "
            f"{e['update_seconds']:.2f}) | GRPO {g['seconds']:7.2f} s (generate "
            f"{g['generate_seconds']:.2f}, update {g['update_seconds']:.2f}) | "
            f"GRPO/ES {g['seconds'] / e['seconds']:.2f}"
        )
        if t > 0:
            es_rows.append(e)
            grpo_rows.append(g)
    med = lambda rows, k: float(np.median([r[k] for r in rows]))
    summary = {
        "es_seconds_per_iteration": med(es_rows, "seconds"),
        "es_generate_seconds": med(es_rows, "generate_seconds"),
        "es_update_seconds": med(es_rows, "update_seconds"),
        "es_generated_tokens": med(es_rows, "tokens"),
        "grpo_seconds_per_step": med(grpo_rows, "seconds"),
        "grpo_generate_seconds": med(grpo_rows, "generate_seconds"),
        "grpo_update_seconds": med(grpo_rows, "update_seconds"),
        "grpo_generated_tokens": med(grpo_rows, "tokens"),
        "n": args.n,
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "fixed_length": args.fixed_length,
        "micro_batch": args.micro_batch,
        "loadavg": os.getloadavg()[0],
    }
    summary["grpo_over_es"] = summary["grpo_seconds_per_step"] / summary["es_seconds_per_iteration"]
    drift = grpo.drift_norm(g_params, ref_params)
    assert bool(jnp.isfinite(drift)), "GRPO produced non-finite parameters"
    print(f"GRPO step / ES iteration: {summary['grpo_over_es']:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
