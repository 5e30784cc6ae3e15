"""Test-wide settings: faked CPU devices so sharded code paths run on one machine.

Four devices unless JAX_NUM_CPU_DEVICES names another count: `tests/conditions.sh`
(docs/testing.md) reruns test files with 1 and 8 to change XLA:CPU's reduction order.
"""

import os

import jax

NUM_CPU_DEVICES = int(os.environ.get("JAX_NUM_CPU_DEVICES", "4"))

# Must run before any backend initialises.
jax.config.update("jax_num_cpu_devices", NUM_CPU_DEVICES)
