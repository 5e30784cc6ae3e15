"""One ES + AWD iteration on an accelerator, random weights shaped like a preset, fixed work.

    python -m benchmarks.gpu_iteration [--model qwen2.5-1.5b-instruct] [--population 8]
        [--prompts 64] [--prompt_len 64] [--new_tokens 256] [--dtype bfloat16]
        [--model_axis 1] [--num_devices 0] [--iterations 2] [--tiny] [--json PATH]

An iteration is the trainer's two device phases: the population's generation (each member's
perturbation, then greedy decoding of the prompts, `es.evaluate_population` on the
("pop", "model") mesh of `esawd.mesh.run_mesh`) and the fused ES + L2 AWD step (`es.es_step`,
theta_0 streamed from host memory). Random weights (`models.init_params`, created on the
devices with their final sharding), random prompt ids of one length and `ignore_eos=True` fix
the work: every member decodes `new_tokens` tokens for every prompt. Rewards are a stand-in
(the mean generated token id), so the update has real, distinct coefficients.

Per iteration it prints seconds (generation, update, total), generated tokens/s
(N x P x T / generation seconds) and the fraction of the device's HBM bandwidth the decoding
reached: the bytes one device must read per decode step (`decode_step_bytes`: a member's
weights in the compute dtype, the device's share of them, and its KV cache at the mean
context of the decode), times the decode steps a device runs, over the generation seconds,
over the device's peak (`PEAK_HBM_BYTES_PER_S`; "n/a" on a CPU or an unknown device). The
generation seconds include the prefill and the perturbations, so the fraction is a lower
bound on the decode's own. The first iteration compiles; later ones are steady. `--tiny`
swaps in a tiny config and shrinks N, P and T for a CPU dry run (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_bench import loadavg  # noqa: E402

from esawd import devices, es, memplan, models  # noqa: E402
from esawd import mesh as mesh_lib  # noqa: E402
from esawd.es import method as es_method  # noqa: E402
from esawd.models.config import COMPUTE_DTYPES  # noqa: E402

DEFAULT_MODEL = "qwen2.5-1.5b-instruct"
SIGMA, ALPHA, LAM = 1e-3, 5e-4, 10.0  # the paper's ES step and L2 AWD strength

# A Qwen2-shaped toy (q/k/v biases, tied embedding, 2 KV heads so model_axis 2 splits them).
TINY = models.ModelConfig(
    arch="qwen2", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
    d_ff=128, rope_theta=1e4, max_position=512, tie_embeddings=True, qkv_bias=True,
    eos_ids=(1,),
)  # fmt: skip
# (population, prompts, prompt_len, new_tokens): full size, and --tiny's
SIZES = {False: (8, 64, 64, 256), True: (4, 8, 8, 16)}

# Peak HBM bandwidth by device kind (NVIDIA's datasheets), most specific first; the
# benchmarks/roofline.py default (--hbm-tb-s 4.8) is the H200's.
PEAK_HBM_BYTES_PER_S = (
    (("H200",), 4.8e12),
    (("H100", "PCIe"), 2.0e12),
    (("H100",), 3.35e12),  # SXM, HBM3
    (("A100", "80GB"), 2.0e12),
    (("A100",), 1.555e12),  # 40GB
)


def peak_bandwidth(device_kind: str) -> float | None:
    """The peak HBM bytes/s of a device kind (`jax.Device.device_kind`), None if unknown."""
    for words, bandwidth in PEAK_HBM_BYTES_PER_S:
        if all(w.lower() in device_kind.lower() for w in words):
            return bandwidth
    return None


def decode_step_bytes(
    config, *, prompts: int, prompt_len: int, new_tokens: int, model_axis: int = 1
) -> float:
    """Bytes one device must read in one decode step of one member: the device's share of the
    member's weights in the compute dtype (`memplan.split_fraction`), and its share of the KV
    cache of `prompts` rows at the decode's mean context.

    Decode step s = 1 .. new_tokens - 1 attends over prompt_len + s tokens, prompt_len +
    new_tokens / 2 on average: the bytes a decode needs, not what `sampling.generate` reads,
    since it attends over all prompt_len + new_tokens slots (masked) at every step. The cache
    splits over `model_axis` by KV head when the axis divides them (as `memplan.member_bytes`).
    Every weight counts once: the tied embedding is read whole as the LM head; an untied
    model's embedding rows are a gather, counted whole too (as benchmarks/roofline.py)."""
    c = config
    item = np.dtype(c.dtype).itemsize
    weights = c.num_params() * item * memplan.split_fraction(c, model_axis)
    heads = model_axis if c.n_kv_heads % model_axis == 0 else 1
    ctx = prompt_len + new_tokens / 2
    kv = 2 * c.n_layers * prompts * c.n_kv_heads * c.head_dim * ctx * item / heads  # k and v
    return weights + kv


def hbm_fraction(
    step_bytes: float, *, steps: int, seconds: float, bandwidth: float | None
) -> float | None:
    """The share of `bandwidth` that reading `step_bytes` `steps` times in `seconds` is."""
    if not bandwidth or seconds <= 0:
        return None
    return step_bytes * steps / seconds / bandwidth


def random_params(config, mesh):
    """float32 random weights created on the devices of `mesh`, already split over `model`
    (`esawd.mesh`): a 1.5B model never passes through host memory."""
    key = jax.random.key(0)
    shapes = jax.eval_shape(lambda k: models.init_params(config, k), key)
    shardings = mesh_lib.param_shardings(shapes, mesh, config=config)
    return jax.jit(lambda k: models.init_params(config, k), out_shardings=shardings)(key)


def peak_memory(device) -> int | None:
    """The device's peak bytes in use so far, where it reports them (GPUs; not the CPU)."""
    stats = device.memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def summarize(paths: list[str]) -> tuple[str, bool]:
    """A markdown table of the steady figures of `main`'s JSON files, one row each (a missing
    file is a failed run's row), and whether every file was there."""
    lines = [
        "| model_axis | devices | device | model | N x P x T | generation s | update s | "
        "total s | tokens/s | HBM bandwidth | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    found = []
    for path in paths:
        if not os.path.exists(path):
            lines.append(f"| ? | | | | | failed: no {path} | | | | | |")
            continue
        with open(path) as f:
            r = json.load(f)
        s, peak = r["steady"], r["peak_memory_bytes"]
        found.append(r)
        lines.append(
            f"| {r['model_axis']} | {r['devices']} | {r['device_kind']} | {r['model']} | "
            f"{r['population']} x {r['prompts']} x {r['new_tokens']} | "
            f"{s['generation_s']:.3f} | {s['update_s']:.3f} | {s['total_s']:.3f} | "
            f"{s['tokens_per_s']:.0f} | {_fmt(s['hbm_fraction'], '.1%')} | "
            f"{_fmt(peak and peak / 2**30, '.1f')} GiB |".replace("n/a GiB", "n/a")
        )
    if found:
        r = found[0]
        lines.append(f"\nmachine: {r['machine']}; jax {r['jax']}; {r['dtype']}; steady: "
                     f"{r['steady_from']}")  # fmt: skip
    return "\n".join(lines), len(found) == len(paths)


def _args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(models.PRESETS))
    parser.add_argument("--population", type=int, help="N members (8; --tiny: 4)")
    parser.add_argument("--prompts", type=int, help="P prompts (64; --tiny: 8)")
    parser.add_argument("--prompt_len", "--prompt-len", type=int, help="tokens (64; --tiny: 8)")
    parser.add_argument("--new_tokens", "--new-tokens", type=int, help="T (256; --tiny: 16)")
    parser.add_argument("--dtype", default="bfloat16", choices=COMPUTE_DTYPES)
    parser.add_argument("--model_axis", "--model-axis", type=int, default=1)
    parser.add_argument("--num_devices", "--num-devices", type=int, default=0, help="0: all")
    parser.add_argument("--iterations", type=int, default=2, help="the first one compiles")
    parser.add_argument("--tiny", action="store_true", help="a tiny config: CPU dry run")
    parser.add_argument("--json", default="", help="write the results here too")
    parser.add_argument("--summarize", nargs="+", metavar="JSON",
                        help="only print the table of these --json files")  # fmt: skip
    args = parser.parse_args(argv)
    names = ("population", "prompts", "prompt_len", "new_tokens")
    for name, default in zip(names, SIZES[args.tiny], strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.iterations < 1 or args.new_tokens < 2:
        parser.error("--iterations must be >= 1 and --new_tokens >= 2 (one decode step)")
    return args


def main(argv=None) -> dict | None:
    args = _args(argv)
    if args.summarize:
        table, complete = summarize(args.summarize)
        print(table)
        if not complete:
            sys.exit(1)
        return None
    name = "tiny" if args.tiny else args.model
    config = (TINY if args.tiny else models.PRESETS[args.model][1]).replace(dtype=args.dtype)
    N, P, W, T, m = args.population, args.prompts, args.prompt_len, args.new_tokens, args.model_axis
    mesh = mesh_lib.run_mesh(jax.devices()[: args.num_devices or None], model_axis=m)
    n_devices, pop = mesh.devices.size, mesh.shape["pop"]
    device = mesh.devices.flat[0]
    plan = memplan.es_plan(config, prompts=P, width=W, max_new_tokens=T, population_size=N,
                           devices=n_devices, model_axis=m)  # fmt: skip
    print(f"machine: {devices.machine()}; jax {jax.__version__}; device kind "
          f"{device.device_kind}; load average {loadavg()}")  # fmt: skip
    print(f"model {name} (random weights): {config.num_params() / 1e6:.1f}M params, compute "
          f"{config.dtype}; N={N}, {P} prompts x {W} tokens, {T} new tokens (EOS ignored); "
          f"mesh {dict(mesh.shape)} over {n_devices} device(s)")  # fmt: skip
    print(plan.format())

    params = random_params(config, mesh)
    anchor = es.host_anchor(params)
    ids = np.random.default_rng(0).integers(2, config.vocab_size, (P, W)).astype(np.int32)
    generate = es_method.make_generate_fn(
        config, ids, np.ones((P, W), bool), max_new_tokens=T, ignore_eos=True, fuse_layers=m == 1
    )
    step_bytes = decode_step_bytes(config, prompts=P, prompt_len=W, new_tokens=T, model_axis=m)
    # Members are padded to a multiple of the `pop` axis and run one after another per device.
    steps = math.ceil(N / pop) * (T - 1)  # decode steps per device; the prefill makes token 1
    bandwidth = peak_bandwidth(device.device_kind) if device.platform != "cpu" else None

    rows = []
    for it in range(args.iterations):
        seeds = np.asarray(es.iteration_seeds(base_seed=0, iteration=it + 1, population_size=N))
        t0 = time.perf_counter()
        tokens, _ = es.evaluate_population(generate, params, seeds, sigma=SIGMA, mesh=mesh,
                                           members_per_batch=1)  # fmt: skip
        tokens = np.asarray(tokens)  # [N, P, T]; waits for the generation
        t1 = time.perf_counter()
        rewards = tokens.mean(axis=(1, 2)) + 1e-3 * np.arange(N)  # a stand-in, distinct
        coeffs = es.normalize_rewards(rewards)
        params, _ = es.es_step(params, anchor, seeds, coeffs, alpha=ALPHA, population_size=N,
                               lam=LAM, kind="l2")  # fmt: skip
        jax.block_until_ready(params)
        t2 = time.perf_counter()
        gen, upd = t1 - t0, t2 - t1
        row = {
            "iteration": it + 1, "compiles": it == 0, "generation_s": gen, "update_s": upd,
            "total_s": gen + upd, "tokens_per_s": N * P * T / gen,
            "read_bytes_per_s": step_bytes * steps / gen,  # per device, decode reads only
            "hbm_fraction": hbm_fraction(step_bytes, steps=steps, seconds=gen,
                                         bandwidth=bandwidth),
        }  # fmt: skip
        rows.append(row)
        label = "1 (compiles)" if it == 0 else str(it + 1)
        print(f"iteration {label}: generation {gen:.3f} s + update {upd:.3f} s = "
              f"{gen + upd:.3f} s; {row['tokens_per_s']:.0f} generated tokens/s; HBM "
              f"bandwidth {_fmt(row['hbm_fraction'], '.1%')}")  # fmt: skip

    steady = rows[1:] or rows
    keys = ("generation_s", "update_s", "total_s", "tokens_per_s", "read_bytes_per_s")
    summary = {k: float(np.median([r[k] for r in steady])) for k in keys}
    fractions = [r["hbm_fraction"] for r in steady]
    summary["hbm_fraction"] = None if None in fractions else float(np.median(fractions))
    peak = peak_memory(device)
    result = {
        "model": name, "params": config.num_params(), "dtype": config.dtype, "population": N,
        "prompts": P, "prompt_len": W, "new_tokens": T, "model_axis": m, "devices": n_devices,
        "pop": pop, "machine": devices.machine(), "jax": jax.__version__,
        "platform": device.platform, "device_kind": device.device_kind,
        "peak_hbm_bytes_per_s": bandwidth, "decode_step_bytes": step_bytes,
        "decode_steps_per_device": steps, "memory_plan": plan.format(),
        "peak_memory_bytes": peak, "loadavg": loadavg(), "iterations": rows,
        "steady": summary, "steady_from": "median of iterations 2.." if len(rows) > 1 else
        "iteration 1 (compiles): run --iterations 2 for a steady figure",
    }  # fmt: skip
    print(f"steady ({result['steady_from']}): generation {summary['generation_s']:.3f} s, "
          f"update {summary['update_s']:.3f} s, total {summary['total_s']:.3f} s, "
          f"{summary['tokens_per_s']:.0f} tokens/s, HBM bandwidth "
          f"{_fmt(summary['hbm_fraction'], '.1%')} (decode step reads "
          f"{step_bytes / 1e6:.3f} MB per device, {steps} steps per device: "
          f"{summary['read_bytes_per_s'] / 1e9:.2f} GB/s; peak "
          f"{_fmt(bandwidth and bandwidth / 1e12, '.2f')} TB/s); peak device memory "
          f"{_fmt(peak and peak / 2**30, '.2f')} GiB")  # fmt: skip
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
