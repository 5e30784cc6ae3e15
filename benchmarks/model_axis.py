"""The "tensor" vs "fsdp" layouts of `esawd.mesh`, measured on the compiled generation.

    python -m benchmarks.model_axis [--model smollm2-135m-instruct] [--dtype bfloat16]
        [--prompts 16] [--prompt_len 64] [--new_tokens 64] [--axes 2,4] [--no-time]

On 4 faked CPU devices (`jax_num_cpu_devices`), one population member's generation (perturb +
greedy decoding, `es.compile_population` on a `run_mesh(model_axis=m)` mesh) is compiled, not
run, on ShapeDtypeStructs carrying each layout's shardings (random weights are never made).
For each layout and model axis it reports

- memory per device from `compiled.memory_analysis()`: argument + temp + output - alias;
- the collectives of the compiled HLO (`hlo_collectives`): their count, and the bytes of
  their results (per device) summed over one generation, split into those inside the decode
  loop (executed new_tokens - 1 times) and those outside it. A loop's trip count is XLA's
  `known_trip_count`; the decode loop's stops on EOS, has none, and counts new_tokens - 1.

The same for "tensor" with the unrolled decode's q/k/v and gate/up fused (`fuse_layers=True`,
the model_axis 1 layout), which shows why runs turn fusion off when split. Then one tiny
config's generation is run and timed per layout (`--no-time` skips it). The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_iteration import TINY, random_params  # noqa: E402
from sampler_bench import loadavg  # noqa: E402

from esawd import devices, es, models  # noqa: E402
from esawd import mesh as mesh_lib  # noqa: E402
from esawd.es import method as es_method  # noqa: E402
from esawd.models.config import COMPUTE_DTYPES  # noqa: E402

NUM_DEVICES = 4
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
SIGMA = 1e-3

# ---------------------------------------------------------------------------------------
# Collectives in compiled HLO text.
# ---------------------------------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
# `%name = shape opcode(`; a shape is one array type or a tuple of them
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\((?:[^()]|\([^()]*\))*\)|\S+) ([\w\-]+)\(")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\]")
_CALLEE = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
)
_CALLEE_LIST = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _bytes(dtype: str, dims: str) -> int:
    bits = 8 if dtype == "pred" else int(re.match(r"[a-z]+(\d+)", dtype).group(1))
    return math.prod(int(d) for d in dims.split(",") if d) * bits // 8


def shape_bytes(shape: str, *, largest: bool = False) -> int:
    """Bytes of an HLO shape ("f32[16,576]{1,0}" or a tuple of them): their sum, or with
    `largest` the largest array (an async `-start` op's tuple holds its operand too)."""
    sizes = [_bytes(t, d) for t, d in _ARRAY.findall(shape)] or [0]
    return max(sizes) if largest else sum(sizes)


def hlo_collectives(text: str, *, unknown_trip: int) -> dict:
    """The collectives of a compiled HLO module: per op name, its count in the program and the
    bytes its results hold over one execution, inside loops of unknown trip count (the decode
    loop, run `unknown_trip` times) and outside them (loops of known trip count multiply).

    Returns {"ops": {op: {"count", "decode_count", "decode_bytes", "other_bytes"}},
    "decode_loops": how many loops had no known trip count}."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            computations[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    # Executions of each computation per run, and how many of them lie in a decode loop.
    runs: dict[str, float] = collections.defaultdict(float)
    decode_runs: dict[str, float] = collections.defaultdict(float)
    decode_loops = 0

    def visit(name: str, times: float, in_decode: bool) -> None:
        nonlocal decode_loops
        runs[name] += times
        if in_decode:
            decode_runs[name] += times
        for line in computations.get(name, ()):
            callees = _CALLEE.findall(line)
            for group in _CALLEE_LIST.findall(line):
                callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            m = _INSTRUCTION.match(line)
            if not (callees and m):
                continue
            loop_times, loop_decode = times, in_decode
            if m.group(2) == "while":  # its body and condition run once per trip
                trip = _TRIP.search(line)
                if trip:
                    loop_times = times * int(trip.group(1))
                else:
                    decode_loops += 1
                    loop_times, loop_decode = times * unknown_trip, True
            for callee in callees:
                visit(callee, loop_times, loop_decode)

    visit(entry, 1.0, False)
    ops = {op: {"count": 0, "decode_count": 0, "decode_bytes": 0.0, "other_bytes": 0.0}
           for op in COLLECTIVES}  # fmt: skip
    for name, lines in computations.items():
        if not runs.get(name):
            continue
        for line in lines:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            shape, opcode = m.groups()
            op = opcode.removesuffix("-start")
            if op not in ops or opcode.endswith("-done"):
                continue
            size = shape_bytes(shape, largest=opcode.endswith("-start"))
            inside = decode_runs.get(name, 0.0)
            ops[op]["count"] += 1
            ops[op]["decode_count"] += int(inside > 0)
            ops[op]["decode_bytes"] += size * inside
            ops[op]["other_bytes"] += size * (runs[name] - inside)
    return {"ops": ops, "decode_loops": decode_loops}


# ---------------------------------------------------------------------------------------
# Compiling and timing one member's generation per layout.
# ---------------------------------------------------------------------------------------


def _generate_fn(config, *, prompts: int, prompt_len: int, new_tokens: int, fuse: bool):
    ids = np.random.default_rng(0).integers(2, config.vocab_size, (prompts, prompt_len))
    return es_method.make_generate_fn(
        config, ids.astype(np.int32), np.ones((prompts, prompt_len), bool),
        max_new_tokens=new_tokens, ignore_eos=True, fuse_layers=fuse,
    )  # fmt: skip


def compile_member(
    config, *, model_axis: int, layout: str, fuse: bool, prompts: int, prompt_len: int,
    new_tokens: int,
) -> dict:  # fmt: skip
    """Compile one member's generation on `model_axis` devices in `layout`: its memory per
    device, its collectives and the compile seconds."""
    mesh = mesh_lib.run_mesh(jax.devices()[:model_axis], model_axis=model_axis)
    shapes = jax.eval_shape(lambda k: models.init_params(config, k), jax.random.key(0))
    shardings = mesh_lib.param_shardings(shapes, mesh, layout=layout, config=config)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    gen = _generate_fn(config, prompts=prompts, prompt_len=prompt_len, new_tokens=new_tokens,
                       fuse=fuse)  # fmt: skip
    t0 = time.perf_counter()
    compiled = es.compile_population(gen, params, np.zeros(1, np.uint32), sigma=SIGMA, mesh=mesh,
                                     members_per_batch=1)  # fmt: skip
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    memory = (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
              - m.alias_size_in_bytes)  # fmt: skip
    found = hlo_collectives(compiled.as_text(), unknown_trip=new_tokens - 1)
    return {
        "model_axis": model_axis, "layout": layout, "fuse_layers": fuse, "compile_s": seconds,
        "memory_bytes": memory, "argument_bytes": m.argument_size_in_bytes,
        "temp_bytes": m.temp_size_in_bytes,
        "split_fraction": mesh_lib.split_fraction(
            shapes, model_axis=model_axis, layout=layout, config=config
        ),
        **found,
    }  # fmt: skip


def time_member(config, *, model_axis: int, layout: str, prompts: int, prompt_len: int,
                new_tokens: int) -> dict:  # fmt: skip
    """Run one member's generation of `config` in `layout` (compile, then a timed run): seconds
    and its tokens, for comparison across layouts."""
    mesh = mesh_lib.run_mesh(jax.devices()[:model_axis], model_axis=model_axis)
    params = mesh_lib.shard_params(random_params(config, mesh), mesh, layout=layout, config=config)
    gen = _generate_fn(config, prompts=prompts, prompt_len=prompt_len, new_tokens=new_tokens,
                       fuse=model_axis == 1)  # fmt: skip
    seeds = np.zeros(1, np.uint32)
    run = lambda: np.asarray(es.evaluate_population(gen, params, seeds, sigma=SIGMA, mesh=mesh,
                                                    members_per_batch=1)[0])  # fmt: skip
    t0 = time.perf_counter()
    run()
    t1 = time.perf_counter()
    tokens = run()  # [1, P, T]
    t2 = time.perf_counter()
    return {"model_axis": model_axis, "layout": layout, "first_s": t1 - t0, "run_s": t2 - t1,
            "tokens": tokens}  # fmt: skip


# ---------------------------------------------------------------------------------------
# The tables.
# ---------------------------------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _kib(b: float) -> str:
    return f"{b / 2**10:,.0f}"


def collective_table(rows: list[dict], *, decode_steps: int) -> str:
    """Markdown: memory per device, and counts and bytes of the collectives, per compile."""
    out = [
        "| model_axis | layout | fuse | memory/device MiB | params held | compile s | "
        + " | ".join(f"{op} (in decode)" for op in COLLECTIVES)
        + " | KiB/device per decode step | in decode loop | outside |",
        "|---|---|---|---|---|---|" + "---|" * len(COLLECTIVES) + "---|---|---|",
    ]
    for r in rows:
        ops = r["ops"]
        counts = " | ".join(f"{ops[op]['count']} ({ops[op]['decode_count']})" for op in COLLECTIVES)
        inside = sum(v["decode_bytes"] for v in ops.values())
        outside = sum(v["other_bytes"] for v in ops.values())
        out.append(
            f"| {r['model_axis']} | {r['layout']} | {r['fuse_layers']} | "
            f"{_mib(r['memory_bytes'])} | {r['split_fraction']:.3f} | {r['compile_s']:.1f} | "
            f"{counts} | {_kib(inside / decode_steps)} | {_kib(inside)} | {_kib(outside)} |"
        )
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(models.PRESETS))
    p.add_argument("--dtype", default="bfloat16", choices=COMPUTE_DTYPES)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt_len", "--prompt-len", type=int, default=64)
    p.add_argument("--new_tokens", "--new-tokens", type=int, default=64)
    p.add_argument("--axes", default="2,4", help="model axes to compare (each <= 4)")
    p.add_argument("--no-time", dest="time", action="store_false", help="skip the tiny runs")
    args = p.parse_args(argv)
    devices.set_cpu_devices(NUM_DEVICES)  # before any JAX work
    axes = [int(a) for a in args.axes.split(",")]
    config = models.PRESETS[args.model][1].replace(dtype=args.dtype)
    sizes = dict(prompts=args.prompts, prompt_len=args.prompt_len, new_tokens=args.new_tokens)
    command = "python -m benchmarks.model_axis " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"machine: {devices.machine()}; jax {jax.__version__}; {NUM_DEVICES} faked CPU "
          f"devices; load average {loadavg()}")  # fmt: skip
    print(f"command: {command.strip()}")
    print(f"{args.model}: {config.num_params() / 1e6:.1f}M params, compute {config.dtype}, "
          f"{config.n_heads} heads / {config.n_kv_heads} KV heads; one member, "
          f"{args.prompts} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens "
          f"(decode loop: {args.new_tokens - 1} steps)")  # fmt: skip

    variants = [(1, "tensor", True)]
    for m in axes:
        variants += [(m, "tensor", False), (m, "fsdp", False), (m, "tensor", True)]
    rows = []
    for m, layout, fuse in variants:
        r = compile_member(config, model_axis=m, layout=layout, fuse=fuse, **sizes)
        rows.append(r)
        print(f"  compiled model_axis {m} {layout} fuse={fuse} in {r['compile_s']:.1f} s "
              f"(decode loops without a trip count: {r['decode_loops']})", flush=True)  # fmt: skip
    print()
    print(collective_table(rows, decode_steps=args.new_tokens - 1))
    print("\ncounts: ops in the program (of which inside the decode loop); KiB: the ops' "
          "result sizes on one device, times their executions in one generation; memory: "
          "argument + temp + output - alias of compiled.memory_analysis()")  # fmt: skip

    timings = []
    if args.time:
        tiny = TINY.replace(dtype=args.dtype)
        t_sizes = dict(prompts=8, prompt_len=8, new_tokens=32)
        base = time_member(tiny, model_axis=1, layout="tensor", **t_sizes)
        timings.append(base)
        for m in axes:
            for layout in mesh_lib.LAYOUTS:
                timings.append(time_member(tiny, model_axis=m, layout=layout, **t_sizes))
        print(f"\ntiny config ({tiny.num_params() / 1e3:.0f}k params, {tiny.dtype}), one member,"
              f" {t_sizes['prompts']} prompts x {t_sizes['prompt_len']} tokens, "
              f"{t_sizes['new_tokens']} new tokens, on the same faked devices:")  # fmt: skip
        print("| model_axis | layout | first run s (compiles) | run s | tokens equal to "
              "model_axis 1 |")  # fmt: skip
        print("|---|---|---|---|---|")
        for t in timings:
            same = float(np.mean(t["tokens"] == base["tokens"]))
            print(f"| {t['model_axis']} | {t['layout']} | {t['first_s']:.2f} | "
                  f"{t['run_s']:.3f} | {same:.0%} |")  # fmt: skip
    result = {
        "machine": devices.machine(), "jax": jax.__version__, "command": command.strip(),
        "model": args.model, "dtype": args.dtype, **sizes, "compiles": rows,
        "timings": [{k: v for k, v in t.items() if k != "tokens"} for t in timings],
        "loadavg": loadavg(),
    }  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
