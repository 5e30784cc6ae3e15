"""What JAX's persistent compilation cache saves the test suite: tiny ES runs, side by side.

    python benchmarks/compile_cache_bench.py [--runs 2]

Each case is a fresh Python process that trains the tests' tiny model (tests/tiny_model.py,
2 ES iterations) `--runs` times in a row, timing each run:

- no-cache:  no persistent cache (each run still recompiles what its new jitted closures need)
- cold:      a persistent cache in an empty directory (the first run fills it)
- warm:      a new process on the cache `cold` left (what a test subprocess sees)

tests/conftest.py turns the cache on for the whole session for these savings. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [{tests!r}, {root!r}]
import jax
jax.config.update("jax_num_cpu_devices", 4)
cache = {cache!r}
if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
from tiny_model import tiny_config, tiny_train, write_tiny_model
work = Path(tempfile.mkdtemp())
model = write_tiny_model(work / "model")
times = []
for i in range({runs}):
    t = time.perf_counter()
    tiny_train(tiny_config(work / f"run{{i}}", model))
    times.append(time.perf_counter() - t)
print("RESULT", json.dumps(times))
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_case(cache: str, runs: int) -> list[float]:
    code = CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT), cache=cache, runs=runs)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="tiny ES runs per process")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="esawd-cache-bench-")
    results = {
        "no-cache": run_case("", args.runs),
        "cold": run_case(cache, args.runs),
        "warm": run_case(cache, args.runs),
    }
    print(f"CPU: {cpu_model()}")
    for name, times in results.items():
        print(f"{name:9s} " + "  ".join(f"run {i}: {t:6.2f} s" for i, t in enumerate(times)))
    base = results["no-cache"]
    ratios = {
        "later_run_no_cache_over_cached": base[-1] / results["cold"][-1],
        "first_run_no_cache_over_warm": base[0] / results["warm"][0],
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x")
    print(json.dumps({"cpu": cpu_model(), "runs": results, **ratios}))


if __name__ == "__main__":
    main()
