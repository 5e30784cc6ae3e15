"""Test-wide settings: four faked CPU devices so sharded code paths run on one machine."""

import jax

# Must run before any backend initialises; every test sees 4 CPU devices.
jax.config.update("jax_num_cpu_devices", 4)
