"""esawd: Evolution Strategies with Anchored Weight Decay for LLM fine-tuning in JAX.

Implements Algorithm 1 of Schweighofer et al. (2026), "Overcoming Forgetting in LLM
Fine-Tuning with Evolution Strategies". Submodules:

- `esawd.es`: noise, perturbation, reward normalisation, the ES update, anchored weight decay,
  the fused host-anchored step and sharded population evaluation.
- `esawd.toy`: the paper's random-walk mechanism on a toy objective.
"""

__version__ = "0.1.0"
