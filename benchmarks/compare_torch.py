"""One ES + AWD iteration the PyTorch reference's way vs esawd's, side by side in one run.

    python benchmarks/compare_torch.py [--population 8] [--prompts 32] [--new-tokens 128]
                                       [--cpu-devices 2] [--rank 4]

Both sides: SmolLM2-135M-Instruct in float32, N members, Countdown prompts, greedy decoding
of a fixed number of new tokens (EOS ignored), the Countdown reward on the decoded text,
z-scored rewards, the ES update and L2 anchored decay (lam = 10).

- PyTorch, as the reference implementation does it: for each member, perturb the model in
  place (one generator reseeded per tensor), `transformers` `generate`, then restore by
  subtracting the same noise; after the population, regenerate every member's noise tensor by
  tensor for the update, then apply the decay towards a copy of theta_0.
- esawd: the trainer's population evaluation (each member's parameters computed on the
  device, generation with a static KV cache, host scoring overlapped) and the fused
  `es.es_step` with theta_0 streamed from pinned host memory. As the trainer does with
  `distributed.cpu_devices`, the CPU is split into --cpu-devices JAX devices (default 2, one
  per core here) so that members generate concurrently; --cpu-devices 1 is one device.
- esawd low rank (`es.noise_rank=--rank`, EGGROLL's noise): the members of each device decode
  as one batch of members x prompts rows over the shared weights, each with its own low-rank
  factors (`sampling.generate(perturbation=...)`); the update is one matmul per weight matrix.
  --rank 0 skips this column.

Also prints the iteration's FLOP lower bound: the generation FLOPs of all members (prompt
tokens x forward FLOPs + generated tokens x decode FLOPs, attention included; low rank adds
its factors' 2 r (m + n) per matrix and token) divided by this CPU's float32 matmul peak,
measured in the same run, and the GFLOP/s each column achieved. Low rank does the same
FLOPs with fewer weight reads. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_bench import loadavg, matmul_peak, useful_flops  # noqa: E402

from esawd import es, models, scoring, tasks  # noqa: E402
from esawd.es import method as es_method  # noqa: E402
from esawd.models import embedded  # noqa: E402

SIGMA, ALPHA, LAM = 1e-3, 5e-4, 10.0


def torch_iteration(model, ids, mask, seeds, score_fn, anchor, *, new_tokens):
    """The reference's ES + AWD iteration on a transformers model, in place."""
    import torch

    def add_noise(seed, scale):
        for p in model.parameters():
            gen = torch.Generator().manual_seed(int(seed))  # reseeded per tensor, as reference
            p.data.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype), alpha=scale)

    rewards = []
    with torch.inference_mode():
        for seed in seeds:
            add_noise(seed, SIGMA)
            out = model.generate(
                torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=model.generation_config.eos_token_id,
            )  # fmt: skip
            add_noise(seed, -SIGMA)  # restore
            tokens = out[:, ids.shape[1] :].numpy()
            lengths = np.full(len(tokens), new_tokens)
            rewards.append(score_fn(tokens, lengths)["reward"].mean())
        z = es.normalize_rewards(np.asarray(rewards))
        for name, p in model.named_parameters():
            update = torch.zeros_like(p)
            for seed, c in zip(seeds, z, strict=True):
                gen = torch.Generator().manual_seed(int(seed))
                update.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype), alpha=float(c))
            p.data.add_(update, alpha=ALPHA / len(seeds))
            a = anchor[name]
            p.data.copy_(a + (1 - ALPHA * LAM) * (p.data - a))
    return np.asarray(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--cpu-devices", type=int, default=2)
    parser.add_argument("--rank", type=int, default=4, help="low-rank column's rank (0: off)")
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any JAX computation

    import torch
    import transformers

    print(f"date {time.strftime('%Y-%m-%d %H:%M')}  loadavg {loadavg()}  "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    task = tasks.get_task("countdown")
    examples = task.generate(args.prompts, seed=0)
    model = models.load("smollm2-135m-instruct")
    config, tokenizer = model.config, model.tokenizer
    batch = scoring.encode(task, examples, tokenizer, bucket=1)
    ids, mask = batch.ids, batch.mask
    seeds = np.asarray(
        es.iteration_seeds(base_seed=0, iteration=1, population_size=args.population)
    )

    def score_fn(tokens, lengths):
        return scoring.score(task, tokenizer, tokens, lengths, examples)

    # ---- PyTorch, the reference's way
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(embedded.converted_dir()), dtype=torch.float32
    ).eval()
    anchor = {name: p.detach().clone() for name, p in ref.named_parameters()}
    with torch.inference_mode():  # warm-up
        ref.generate(torch.tensor(ids[:2]), attention_mask=torch.tensor(mask[:2]),
                     max_new_tokens=2, do_sample=False)  # fmt: skip
    t0 = time.perf_counter()
    torch_rewards = torch_iteration(
        ref, ids, mask, seeds, score_fn, anchor, new_tokens=args.new_tokens
    )
    torch_s = time.perf_counter() - t0
    print(f"pytorch (reference way): {torch_s:8.1f} s/iteration")
    del ref, anchor

    # ---- esawd
    mesh = es.population_mesh(jax.devices())
    print(f"esawd on {len(jax.devices())} {jax.default_backend()} device(s)")
    params = jax.device_put(model.params)
    host = es.host_anchor(params)
    generate_fn = es_method.make_generate_fn(
        config, ids, mask, max_new_tokens=args.new_tokens, ignore_eos=True
    )

    def esawd_iteration(params, rank):
        fn = lowrank_fn if rank else generate_fn
        member = es_method.population_fitness(
            fn, params, seeds, score_fn, sigma=SIGMA, antithetic=False, mesh=mesh,
            members_per_batch=per_device if rank else 1, noise_sharing="none", rank=rank,
        )  # fmt: skip
        coeffs = es.normalize_rewards(member["reward"])
        params, _ = es.es_step(
            params, host, seeds, coeffs, alpha=ALPHA, population_size=len(seeds), lam=LAM,
            kind="l2", rank=rank,
        )  # fmt: skip
        return jax.block_until_ready(params), member["reward"]

    def timed(rank, label):
        nonlocal params
        t0 = time.perf_counter()
        params, _ = esawd_iteration(params, rank)  # compiles
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        params, rewards = esawd_iteration(params, rank)
        seconds = time.perf_counter() - t0
        print(f"{label:25s}{seconds:8.1f} s/iteration (first, with compilation: {first:.1f} s)")
        return seconds, first, rewards

    lowrank_fn = es_method.make_population_generate_fn(
        config, ids, mask, max_new_tokens=args.new_tokens, ignore_eos=True
    )
    per_device = -(-args.population // len(jax.devices()))  # every member of a device at once
    esawd_s, compile_s, esawd_rewards = timed(0, "esawd:")
    low_s = low_first = low_rewards = None
    if args.rank:
        low_s, low_first, low_rewards = timed(args.rank, f"esawd low rank (r={args.rank}):")

    # ---- the FLOP lower bound
    peak = matmul_peak()
    flops = args.population * useful_flops(config, mask.sum(axis=1), args.new_tokens)
    rows_tokens = args.population * float((mask.sum(axis=1) + args.new_tokens - 1).sum())
    low_flops = flops + rows_tokens * 2 * args.rank * perturbation_width(config)
    bound, low_bound = flops / peak, low_flops / peak
    print(f"generation work {flops / 1e12:.2f} TFLOP (low rank {low_flops / 1e12:.2f}) at the "
          f"measured float32 matmul peak {peak / 1e9:.0f} GFLOP/s: lower bound {bound:.1f} s "
          f"(low rank {low_bound:.1f} s) per iteration")  # fmt: skip
    print(
        f"achieved: pytorch {flops / torch_s / 1e9:.0f}, esawd {flops / esawd_s / 1e9:.0f}"
        + (f", low rank {low_flops / low_s / 1e9:.0f}" if low_s else "")
        + " GFLOP/s"
    )
    print(f"esawd full rank: {torch_s / esawd_s:.2f}x the PyTorch way, {esawd_s / bound:.2f}x "
          f"the lower bound")  # fmt: skip
    if low_s:
        print(f"esawd low rank:  {torch_s / low_s:.2f}x the PyTorch way (goal >= 2.5x), "
              f"{esawd_s / low_s:.2f}x full-rank esawd (goal >= 2x), {low_s / low_bound:.2f}x "
              f"the lower bound")  # fmt: skip
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
        "population": args.population, "prompts": args.prompts, "new_tokens": args.new_tokens,
        "devices": len(jax.devices()), "prompt_width": int(ids.shape[1]),
        "prompt_tokens_mean": float(mask.sum(axis=1).mean()),
        "torch_seconds": torch_s, "esawd_seconds": esawd_s, "esawd_first_seconds": compile_s,
        "speedup": torch_s / esawd_s, "lower_bound_seconds": bound,
        "ratio_to_bound": esawd_s / bound, "matmul_peak_gflops": peak / 1e9,
        "rank": args.rank, "lowrank_seconds": low_s, "lowrank_first_seconds": low_first,
        "lowrank_speedup_vs_torch": torch_s / low_s if low_s else None,
        "lowrank_speedup_vs_full": esawd_s / low_s if low_s else None,
        "lowrank_lower_bound_seconds": low_bound,
        "torch_reward_mean": float(np.mean(torch_rewards)),
        "esawd_reward_mean": float(np.mean(esawd_rewards)),
        "lowrank_reward_mean": float(np.mean(low_rewards)) if low_s else None,
        "loadavg": loadavg(),
    }))  # fmt: skip


def perturbation_width(config) -> int:
    """sum of (m + n) over the weight matrices one token passes through (layers and head)."""
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    layer = (c.d_model + q) * 2 + (c.d_model + kv) * 2 + (c.d_model + c.d_ff) * 3
    return c.n_layers * layer + c.vocab_size + c.d_model  # the head (tied or not)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
