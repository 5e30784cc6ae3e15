"""One process of the 2-process test: ES iterations across `jax.distributed` on loopback.

python tests/distributed_worker.py PROCESS_ID PORT OUT.npz
"""

import sys

import jax

process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from test_es import make_params, quadratic_fitness  # noqa: E402

from esawd import es  # noqa: E402


def main():
    assert jax.process_count() == 2 and jax.device_count() == 4
    mesh = es.population_mesh()  # all 4 devices of both processes
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = jax.device_put(make_params(), replicated)
    anchor = es.host_anchor(params)
    rewards = []
    for t in (1, 2):
        seeds = es.iteration_seeds(base_seed=5, iteration=t, population_size=7)
        r = es.evaluate_population(quadratic_fitness, params, seeds, sigma=0.1, antithetic=True)
        r = np.asarray(multihost_utils.process_allgather(r, tiled=True))
        rewards.append(r)
        coeffs = es.normalize_rewards(r, antithetic=True)
        params, _ = es.es_step(
            params, anchor, seeds, coeffs, alpha=0.05, population_size=14, lam=2.0, kind="l2"
        )
    leaves = [
        np.asarray(multihost_utils.process_allgather(x, tiled=True), np.float32)
        for x in jax.tree.leaves(params)
    ]
    if process_id == 0:
        np.savez(out, *leaves, rewards=np.stack(rewards))


if __name__ == "__main__":
    main()
