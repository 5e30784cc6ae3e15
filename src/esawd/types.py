"""Type aliases shared across esawd."""

from collections.abc import Callable
from typing import Any

import jax

Params = Any  # a pytree of arrays: the model's parameters (float32 masters)
PRNGKey = jax.Array
Seeds = jax.Array  # uint32 [population], one seed per population member
Fitness = Callable[[Params, PRNGKey], jax.Array]  # fitness(params, key) -> scalar reward
