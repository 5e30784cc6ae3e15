"""Test-wide settings: faked CPU devices so sharded code paths run on one machine.

Four devices unless JAX_NUM_CPU_DEVICES names another count: docs/testing.md reruns the suite
with 1 and 8 to change XLA:CPU's reduction order; tests that need four devices skip below.
"""

import os

import jax

NUM_CPU_DEVICES = int(os.environ.get("JAX_NUM_CPU_DEVICES", "4"))

# Must run before any backend initialises.
jax.config.update("jax_num_cpu_devices", NUM_CPU_DEVICES)
