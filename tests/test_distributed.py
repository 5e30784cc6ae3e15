"""A population evaluated across 2 processes (`jax.distributed` on loopback) equals 1 process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from numerics import assert_sum_close, float_tol, unit_roundoff
from test_es import make_params, quadratic_fitness

from esawd import es

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_reference():
    params, rewards = make_params(), []
    anchor = es.host_anchor(params)
    for t in (1, 2):
        seeds = es.iteration_seeds(base_seed=5, iteration=t, population_size=7)
        mesh = es.population_mesh(jax.devices()[:1])
        r = np.asarray(es.evaluate_population(quadratic_fitness, params, seeds, sigma=0.1,
                                              antithetic=True, mesh=mesh))  # fmt: skip
        rewards.append(r)
        coeffs = es.normalize_rewards(r, antithetic=True)
        params, _ = es.es_step(
            params, anchor, seeds, coeffs, alpha=0.05, population_size=14, lam=2.0, kind="l2"
        )
    return np.stack(rewards), [np.asarray(x, np.float32) for x in jax.tree.leaves(params)]


def test_two_processes_equal_one(tmp_path):
    port, out = free_port(), tmp_path / "out.npz"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("JAX_NUM_CPU_DEVICES", None)
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "distributed_worker.py"), str(i), str(port),
                          str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]  # fmt: skip
    logs = [p.communicate(timeout=300)[0].decode()[-3000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    got = np.load(out)
    rewards, leaves = single_process_reference()
    assert got["rewards"].shape == (2, 2, 7)
    # Two processes and one run different programs. Rewards: as test_es's sharded population
    # (77 squares + the noise term). Parameters: each iteration's z-scores move by at most
    # that over the rewards' std (twice: antithetic z0 - z1), the update alpha/N sum z eps by
    # alpha times that times |eps| < 6; add the update's own rounding, and for the bfloat16
    # leaf one of its rounding steps (numerics).
    scale = np.abs(rewards) + 2 * 1e-3 * 6
    assert_sum_close(got["rewards"], rewards, scale=scale, dtype=np.float32, terms=77 + 4)
    dz = [2 * float_tol(np.float32, 77 + 4) * scale[t].max() / rewards[t].std() for t in (0, 1)]
    drift = sum(0.05 * d * 6 for d in dz)
    params = jax.tree.leaves(make_params())
    for i, want in enumerate(leaves):
        u = unit_roundoff(params[i].dtype)
        # |z0 - z1| <= 2 sqrt(2K - 1) < 8 for K = 7, so |alpha/N sum z eps| < 0.05 * 8 * 6
        tol = drift + float_tol(np.float32, 2 * (14 + 5)) * (np.abs(want) + 0.05 * 8 * 6)
        tol = tol + (2 * u * np.abs(want) if params[i].dtype != np.float32 else 0)
        np.testing.assert_array_less(np.abs(got[f"arr_{i}"] - want), tol + 1e-30)
    assert np.std(rewards) > 0
