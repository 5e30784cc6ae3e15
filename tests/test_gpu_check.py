"""benchmarks/gpu_check.sh and benchmarks/gpu_iteration.py: the CPU dry run of the GPU check
runs end to end, and the HBM-bandwidth arithmetic matches a hand count."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_iteration, roofline

ROOT = Path(__file__).resolve().parents[1]


def test_decode_step_bytes_match_a_hand_count():
    # TINY: vocab 256 x d 64 (tied), 2 layers of q/k/v 64/32/32 columns (+ biases), o 64x64,
    # MLP 3 x 64 x 128, two norms of 64; and the final norm.
    layer = 64 * 128 + 128 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    n = 256 * 64 + 2 * layer + 64
    assert gpu_iteration.TINY.num_params() == n == 90688
    kw = dict(prompts=8, prompt_len=8, new_tokens=16)
    # KV cache at the mean context 8 + 16 / 2: k and v x 2 layers x 8 rows x 2 heads x 16 dims
    kv = 2 * 2 * 8 * 2 * 16 * (8 + 8)
    bf16 = gpu_iteration.TINY.replace(dtype="bfloat16")
    assert gpu_iteration.decode_step_bytes(bf16, **kw) == 2 * n + 2 * kv == 214144
    f32 = gpu_iteration.TINY.replace(dtype="float32")
    assert gpu_iteration.decode_step_bytes(f32, **kw) == 4 * n + 4 * kv
    # model_axis 2 ("tensor"): every matrix and q/k/v bias halves, the 5 norms of 64 stay
    # whole; the cache splits by its 2 KV heads.
    held = (n - 5 * 64) / 2 + 5 * 64
    assert gpu_iteration.decode_step_bytes(bf16, model_axis=2, **kw) == 2 * held + kv
    # benchmarks/roofline.py counts the same bytes for one bfloat16 member
    step = roofline.step(bf16, members=1, rows=8, ctx=16, rank=0, hbm=1.0, peak=1.0)
    assert step["bytes"] == gpu_iteration.decode_step_bytes(bf16, **kw)


def test_peak_bandwidth_by_device_kind():
    peak = gpu_iteration.peak_bandwidth
    assert peak("NVIDIA H200") == 4.8e12
    assert peak("NVIDIA H100 80GB HBM3") == 3.35e12
    assert peak("NVIDIA H100 PCIe") == 2.0e12
    assert peak("NVIDIA A100-SXM4-80GB") == 2.0e12
    assert peak("cpu") is None and peak("NVIDIA L4") is None
    # 1 GB read 4.8e3 times in 2 s at 4.8 TB/s: half the bandwidth
    assert gpu_iteration.hbm_fraction(1e9, steps=4800, seconds=2.0, bandwidth=4.8e12) == 0.5
    assert gpu_iteration.hbm_fraction(1e9, steps=1, seconds=1.0, bandwidth=None) is None


@pytest.mark.slow
def test_cpu_dry_run_of_the_gpu_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["PYTHON"] = sys.executable
    results = tmp_path / "results"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu", "--axes", "1", "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    table = out[out.index("| model_axis | devices |") :]
    # model axis 1 only (--axes 1; the axis of a one-GPU machine): each axis is a subprocess
    # that compiles for ~20 s. Axis 2's split members: tests/test_mesh.py.
    assert "\n| 2 | 2 | cpu |" not in table and not (results / "gpu_iteration_m2.json").exists()
    assert "\n| 1 | 2 | cpu | tiny | 4 x 8 x 16 |" in table, table
    r = json.loads((results / "gpu_iteration_m1.json").read_text())
    assert (r["model_axis"], r["devices"], r["pop"]) == (1, 2, 2)
    assert len(r["iterations"]) == 2 and r["iterations"][0]["compiles"]
    for row in [*r["iterations"], r["steady"]]:
        for key in ("generation_s", "update_s", "total_s", "tokens_per_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["hbm_fraction"] is None  # a CPU has no HBM peak
    assert r["steady"]["tokens_per_s"] == pytest.approx(4 * 8 * 16 / r["steady"]["generation_s"])
    assert (results / "summary.md").read_text().strip() in out
    assert "command: benchmarks/gpu_check.sh --cpu --axes 1" in out


def test_gpu_check_refuses_bad_axes(tmp_path):
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu", "--axes", "1,x", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHON": "false"},  # fails before any Python would run
    )  # fmt: skip
    assert proc.returncode == 2 and "--axes 1,x: use positive integers" in proc.stderr
