"""esawd: Evolution Strategies with Anchored Weight Decay for LLM fine-tuning in JAX.

Implements Algorithm 1 of Schweighofer et al. (2026), "Overcoming Forgetting in LLM
Fine-Tuning with Evolution Strategies". Submodules:

- `esawd.es`: the algorithm layer, a package split by job:
  - `esawd.es.noise`: noise regenerated from seeds, perturbation, iteration seeds;
  - `esawd.es.update`: reward normalisation, the ES update, anchored weight decay and the
    fused host-anchored step `es_step`;
  - `esawd.es.anchor`: theta_0 in pinned host memory (`HostAnchor`);
  - `esawd.es.population`: sharded population evaluation.
  `esawd.es` re-exports all of them (`es.perturb`, `es.es_step`, ...).
- `esawd.toy`: the paper's random-walk mechanism on a toy objective.
"""

__version__ = "0.1.0"
