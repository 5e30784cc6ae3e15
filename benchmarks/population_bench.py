"""Seconds per population member by batch layout, side by side in one run (SmolLM2-135M).

    python benchmarks/population_bench.py [--population 4] [--prompts 16] [--new-tokens 64]
        [--layouts direct,sequential,vmap2] [--data-dir DIR]
    python benchmarks/population_bench.py --cpu-devices 2 --layouts sequential,spread

Every layout evaluates the same N perturbed members on the same prompts (greedy, fixed
length), all after a compiling call:

- direct:      one jitted `perturb + sampling.generate` call per member (the floor: the
               sampler on a member's weights, nothing around it)
- sequential:  `es.evaluate_population`, members one after another inside one compiled step
               (what the trainer runs with es.members_per_batch=1)
- vmapK:       `es.evaluate_population(members_per_batch=K)`: K members vmapped, each with its
               own perturbed weights, so one batch holds K x prompts rows
- map_b1:      `lax.map(perturb + generate, seeds, batch_size=1)`: what evaluate_population ran
               for members_per_batch=1 before 2026-11-28 (a size-1 vmap around generation)
- spread:      `es.evaluate_population` over a mesh of every device, one member per device at
               a time; with --cpu-devices K the CPU is split into K JAX devices (the trainer's
               distributed.cpu_devices), so K members generate concurrently. All other
               layouts run on the first device alone, which still uses every core.
- lowrankK:    low-rank noise (--rank), `es.evaluate_population(factored=True,
               members_per_batch=K)`: K members decode as one batch of K x prompts rows over
               the shared weights, each adding its own factors (es.noise_rank > 0)
- lowrank_spread: the same over every device, N / devices members per batch
- shared:      one unperturbed `sampling.generate` of N x prompts rows: the floor for a
               batch over shared weights (what low rank costs on top of it is its factors)

With full-rank noise each member has its own weights, so vmapping members does not raise
arithmetic intensity (the prompt batch does); this measures what it costs or saves. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_bench import loadavg  # noqa: E402

from esawd import es, models, scoring, tasks  # noqa: E402
from esawd.es import method as es_method  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--layouts", default="direct,sequential,vmap2")
    p.add_argument("--task", default="countdown")
    p.add_argument("--data-dir", default="", help="folder with <task>/ (else procedural)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cpu-devices", type=int, default=1, help="JAX CPU devices (for spread)")
    p.add_argument("--rank", type=int, default=4, help="noise rank of the lowrank layouts")
    args = p.parse_args()
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any JAX computation

    task = tasks.get_task(args.task)
    if args.data_dir:
        examples = task.load("train", args.data_dir)[: args.prompts]
    else:
        examples = task.generate(args.prompts, seed=0)
    model = models.load("smollm2-135m-instruct")
    prompts = scoring.encode(task, examples, model.tokenizer)
    gen = es_method.make_generate_fn(
        model.config, prompts.ids, prompts.mask, max_new_tokens=args.new_tokens, ignore_eos=True
    )
    mesh = es.population_mesh(jax.devices()[:1])
    params = jax.device_put(
        model.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    all_devices = es.population_mesh(jax.devices())
    seeds = np.asarray(
        es.iteration_seeds(base_seed=0, iteration=1, population_size=args.population)
    )

    batch_gen = es_method.make_population_generate_fn(
        model.config, prompts.ids, prompts.mask, max_new_tokens=args.new_tokens, ignore_eos=True
    )
    rows = (np.tile(prompts.ids, (args.population, 1)), np.tile(prompts.mask, (args.population, 1)))
    shared_gen = es_method.make_generate_fn(
        model.config, *rows, max_new_tokens=args.new_tokens, ignore_eos=True
    )
    shared_jit = jax.jit(lambda p: shared_gen(p, None))

    @jax.jit
    def direct_member(params, seed):
        return gen(es.perturb(params, seed, sigma=1e-3), None)

    @jax.jit
    def map_b1(params, seeds):
        member = lambda s: gen(es.perturb(params, s, sigma=1e-3), None)  # noqa: E731
        return jax.lax.map(member, seeds, batch_size=1)

    def run(layout):
        if layout == "direct":
            return [direct_member(params, jnp.uint32(s)) for s in seeds]
        if layout == "map_b1":
            return map_b1(params, jnp.asarray(seeds, jnp.uint32))
        if layout == "spread":
            return es.evaluate_population(
                gen, params, seeds, sigma=1e-3, mesh=all_devices, members_per_batch=1
            )
        if layout == "shared":
            return shared_jit(params)
        if layout.startswith("lowrank"):
            spread = layout == "lowrank_spread"
            k = -(-len(seeds) // len(jax.devices())) if spread else int(layout[7:])
            return es.evaluate_population(
                batch_gen, params, seeds, sigma=1e-3, mesh=all_devices if spread else mesh,
                members_per_batch=k, rank=args.rank, factored=True,
            )  # fmt: skip
        k = 1 if layout == "sequential" else int(layout.removeprefix("vmap"))
        return es.evaluate_population(
            gen, params, seeds, sigma=1e-3, mesh=mesh, members_per_batch=k
        )

    layouts = args.layouts.split(",")
    width = int(prompts.mask.sum(axis=1).max())  # make_generate_fn pads to the longest prompt
    print(
        f"N={args.population}, {args.prompts} {args.task} prompts (width {width})"
        f" x {args.new_tokens} new tokens, fixed length; layouts {layouts}; "
        f"{len(jax.devices())} {jax.default_backend()} device(s); load {loadavg()}",
        flush=True,
    )
    tokens = {}
    for layout in layouts:  # compile everything first
        t = time.perf_counter()
        out = jax.block_until_ready(run(layout))
        tok = np.concatenate([np.asarray(o[0]) for o in out]) if layout == "direct" else out[0]
        tokens[layout] = np.asarray(tok).reshape(args.population, args.prompts, -1)
        print(f"  {layout}: first call (compiling) {time.perf_counter() - t:.1f} s", flush=True)
    seconds = {layout: [] for layout in layouts}
    for _ in range(args.repeats):
        for layout in layouts:  # interleaved, so load changes hit every layout alike
            t = time.perf_counter()
            jax.block_until_ready(run(layout))
            seconds[layout].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in seconds.items()}
    base = best[layouts[0]]
    for layout in layouts:
        same = np.array_equal(tokens[layout], tokens[layouts[0]])
        print(
            f"{layout:>12}: {best[layout]:7.2f} s for {args.population} members, "
            f"{best[layout] / args.population:6.2f} s/member, {best[layout] / base:5.2f}x "
            f"{layouts[0]}; same tokens as {layouts[0]}: {same}"
        )
    print(f"load at the end {loadavg()}")
    print(json.dumps({"seconds": best, "population": args.population, "prompts": args.prompts,
                      "devices": len(jax.devices()), "prompt_width": width,
                      "new_tokens": args.new_tokens, "load_end": loadavg()}))  # fmt: skip


if __name__ == "__main__":
    main()
