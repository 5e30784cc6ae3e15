"""What compiling with most of XLA's optimizations off saves the test suite, side by side.

    python benchmarks/unoptimized_tests_bench.py [--repeats 1] [-- PYTEST ARGS]

tests/conftest.py sets JAX_DISABLE_MOST_OPTIMIZATIONS=1 for the suite (LLVM at -O0, no
expensive passes; the HLO passes, fusion included, still run). This runs one pytest selection
(default: the fast tests of test_sampling.py and test_lowrank.py, most of them compiling
small programs) in a fresh process with an empty compilation cache, with the variable 0
(optimized, as users' runs compile) and 1, alternating, `--repeats` times each, and prints the
wall seconds of each, their ratio and the CPU model. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from esawd import devices

ROOT = Path(__file__).resolve().parents[1]

DEFAULT = ["-m", "not slow", "tests/test_sampling.py", "tests/test_lowrank.py"]


def run(selection: list[str], unoptimized: bool) -> tuple[float, str]:
    """Seconds and pytest's summary line for one cold run of `selection`."""
    with tempfile.TemporaryDirectory(prefix="esawd-bench-cache-") as cache:
        env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": str(int(unoptimized)),
               "JAX_COMPILATION_CACHE_DIR": cache}  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
             *selection],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", x)]
    summary = lines[-1].strip("= ") if lines else proc.stdout[-500:]
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed (JAX_DISABLE_MOST_OPTIMIZATIONS={int(unoptimized)}): "
                         f"{summary}\n{proc.stdout[-3000:]}")  # fmt: skip
    return seconds, summary


def main() -> None:
    argv = sys.argv[1:]
    selection = DEFAULT
    if "--" in argv:
        cut = argv.index("--")
        argv, selection = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1, help="runs of each setting, alternating")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats {a.repeats}: use 1 or more")
    print(f"{' '.join(selection)} on {devices.machine()}", flush=True)
    times = {"optimized": [], "unoptimized": []}
    for i in range(a.repeats):
        for name in ("optimized", "unoptimized"):
            seconds, summary = run(selection, name == "unoptimized")
            times[name].append(round(seconds, 1))
            print(f"  {name} run {i + 1}: {seconds:.1f} s ({summary})", flush=True)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["unoptimized"] / best["optimized"]
    print(f"unoptimized / optimized: {ratio:.2f} (best of {a.repeats} each)")
    print(json.dumps({"machine": devices.machine(), "selection": selection, "seconds": times,
                      "ratio": round(ratio, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
