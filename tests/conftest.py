"""Test-wide settings: faked CPU devices so sharded code paths run on one machine, and one
persistent compilation cache for the session.

Four devices unless JAX_NUM_CPU_DEVICES names another count: `tests/conditions.sh`
(docs/testing.md) reruns test files with 1 and 8 to change XLA:CPU's reduction order.

Most of the suite's time is XLA compiling the same tiny-model programs again: every training
run builds its jitted functions afresh, and every subprocess starts cold. JAX's persistent
cache, keyed by the program, the compile options, XLA_FLAGS and the jax version, serves
those from disk (benchmarks/compile_cache_bench.py: a later tiny ES run 5.8x faster, a new
process's first 2.6x; docs/benchmarks.md). It lives in a temporary directory removed after
the session, so every `make test` starts cold like CI; JAX_COMPILATION_CACHE_DIR names one
to keep instead. The environment variables carry it into the tests' subprocesses.

The suite also compiles with most of XLA's optimizations off (`jax_disable_most_optimizations`:
LLVM at -O0, no expensive passes; the HLO passes, fusion included, still run): its programs
are tiny and run once, so compiling is most of their cost (benchmarks/unoptimized_tests_bench.py:
a third less time on the sampler and low-rank tests; docs/testing.md). A module whose fixture
computes for long takes `tiny_model.optimized_xla()` around it. JAX_DISABLE_MOST_OPTIMIZATIONS=0
compiles everything as users' runs do (tests/conditions.sh `optimized`).
"""

import atexit
import os
import shutil
import tempfile

import jax
import pytest
from tiny_model import unoptimized_from_env

NUM_CPU_DEVICES = int(os.environ.get("JAX_NUM_CPU_DEVICES", "4"))
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # carried into subprocesses
jax.config.update("jax_disable_most_optimizations", unoptimized_from_env())

# Must run before any backend initialises.
jax.config.update("jax_num_cpu_devices", NUM_CPU_DEVICES)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="esawd-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tiny programs too
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)


@pytest.fixture
def four_devices():
    """The first 4 CPU devices, for tests that shard over them; skipped where a condition of
    `tests/conditions.sh` runs with fewer (JAX_NUM_CPU_DEVICES=1)."""
    assert jax.device_count() == NUM_CPU_DEVICES  # conftest's setting reached the backend
    if NUM_CPU_DEVICES < 4:
        pytest.skip(f"shards over 4 CPU devices; JAX_NUM_CPU_DEVICES={NUM_CPU_DEVICES}")
    return jax.devices()[:4]


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """A tiny Qwen2-shaped model (q/k/v biases) for the paper configs' dry runs, written once."""
    from tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("qwen2") / "model", arch="qwen2")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama-shaped model directory (tests/tiny_model.py), written once per module."""
    from tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def varied_reward():
    """Countdown's reward replaced by one that varies with the text (tests/trainer_driver.py),
    so a tiny model's members score differently; restored after the test."""
    from trainer_driver import patch_reward

    from esawd.tasks.countdown import Countdown

    original = Countdown.reward
    patch_reward()
    yield
    Countdown.reward = original
