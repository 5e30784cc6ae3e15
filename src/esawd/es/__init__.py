"""Evolution Strategies with Anchored Weight Decay over parameter pytrees.

Implements Algorithm 1 of Schweighofer et al. (2026), "Overcoming Forgetting in LLM
Fine-Tuning with Evolution Strategies":

    for t = 1..T:
        sample seeds s_1..s_N                                        (iteration_seeds)
        R_n = reward(theta_{t-1} + sigma * eps(s_n))                 (evaluate_population)
        z = (R - mean R) / (std R + 1e-8)                            (normalize_rewards)
        theta_t = theta_{t-1} + alpha / N * sum_n z_n eps(s_n)       (es_update)
        theta_t = theta_t - alpha * lam * l'(theta_t - theta_0)      (anchored_decay, step 8)

`es_step` fuses the last two lines with theta_0 held in host memory and returns
`(params, metrics)`. Modules, by job:

- `noise`: eps(s) as a pure function of (seed, leaf path, layer index); `perturb`, seeds;
  low-rank noise (`rank=r`) and a member's factored perturbation (`member_perturbation`).
- `update`: reward normalisation, the ES update, anchored weight decay, the fused `es_step`.
- `anchor`: theta_0 in pinned host memory (`HostAnchor`) and the placement helpers.
- `population`: sharded population evaluation over the `pop` mesh axis.
- `reference`: the reference's float16 in-place dynamics (`es.precision`), a reproduction
  switch.

Dtype policy. Master parameters are float32: every function here computes in float32 and
casts back to each leaf's dtype, one rounding per step. The ES step's std per weight,
alpha / sqrt(N) (9.1e-5 at the paper's settings), is below bfloat16's resolution for most
weights but several float16 steps for |w| ~ 0.02; float16 in place mostly breaks anchored weight
decay instead (a dead zone, docs/algorithm.md), which `reference_step` reproduces on request.
Compute dtypes for the forward pass are a separate, model-level setting.
"""

from esawd.es.anchor import HostAnchor, host_anchor, host_value
from esawd.es.noise import (
    CHUNK_ELEMENTS,
    NOISE_SHARING,
    STACKED_KEY,
    is_stacked,
    iteration_seeds,
    leaf_id,
    member_perturbation,
    perturb,
    sample_noise,
    slice_noise,
)
from esawd.es.population import (
    compile_population,
    evaluate_population,
    fitness_key,
    population_mesh,
)
from esawd.es.reference import PRECISIONS, reference_step, residue_trips
from esawd.es.update import (
    AWD_KINDS,
    anchored_decay,
    check_awd,
    es_step,
    es_update,
    normalize_rewards,
)

__all__ = [
    "AWD_KINDS",
    "CHUNK_ELEMENTS",
    "NOISE_SHARING",
    "PRECISIONS",
    "STACKED_KEY",
    "HostAnchor",
    "anchored_decay",
    "check_awd",
    "es_step",
    "es_update",
    "evaluate_population",
    "fitness_key",
    "host_anchor",
    "host_value",
    "is_stacked",
    "iteration_seeds",
    "leaf_id",
    "member_perturbation",
    "normalize_rewards",
    "perturb",
    "population_mesh",
    "compile_population",
    "reference_step",
    "residue_trips",
    "sample_noise",
    "slice_noise",
]
