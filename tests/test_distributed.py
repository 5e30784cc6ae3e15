"""A population evaluated across 2 processes (`jax.distributed` on loopback) equals 1 process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
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
    np.testing.assert_allclose(got["rewards"], rewards, rtol=1e-6)
    for i, want in enumerate(leaves):
        np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-6, atol=1e-7)
    assert np.std(rewards) > 0
