"""The paper's three findings at CPU scale (docs/results.md, "The three findings"): one target,
the same prompts and iterations, population sizes 4, 16 and 64, AWD at the smallest, GRPO at a
matched sample budget. SmolLM2-135M-Instruct on `rules` (procedural, offline), as `make run`.

    python -m experiments.findings --data_dir DATA --out runs/findings   # all arms, resumable
    python -m experiments.run --config configs/findings.py:es_n16_s0 \\
        --config.workdir=runs/findings/es_n16_s0                          # one arm

DATA holds piqa/, arc_challenge/ and mmlu_pro/ (the prior tasks, e.g. ../shared/data).

Every ES arm: sigma = 1e-3, alpha = 2e-3, T = 12 iterations on the same 16 training prompts,
64 new tokens, rank-4 noise (EGGROLL; it learned as full rank did per iteration on this
target, docs/results.md "Low-rank noise"); `es_n16_full` connects to the paper's full-rank
noise. AWD: L2 with lam = 75, so that c = alpha * lam = 0.15 shrinks the unconstrained walk
to 0.46 of plain ES's after 12 iterations, as the paper's c = 0.005 does (0.44) after 500
(configs/small_repro.py has the formula). GRPO: 16 prompts x 4 completions x 12 steps = 768
sampled completions, the budget of ES at N = 4 (4 members x 16 prompts x 12); N = 16's
budget would take GRPO's gradients about 3 hours per seed on 2 CPU cores.

| arm | N | noise | AWD | finding it serves |
|---|---|---|---|---|
| es_n4 | 4 | rank 4 | - | 1: drift and forgetting shrink with N |
| es_n16 | 16 | rank 4 | - | 1 |
| es_n64 | 64 | rank 4 | - | 1, 2: the large population AWD is compared with |
| es_n16_full | 16 | full | - | connects low rank to the paper's noise |
| awd_n4 | 4 | rank 4 | L2, lam = 75 | 2: AWD at a small N |
| grpo | - | - | - | 3: GRPO moves weights less, the distribution more |

Seeds: `_s0`, `_s1`, ... set es.seed / grpo.seed (the target's data seed too).
"""

from configs.common import base

# arm -> (method, N, noise rank, AWD kind, lam)
ARMS = {
    "es_n4": ("es", 4, 4, "none", 0.0),
    "es_n16": ("es", 16, 4, "none", 0.0),
    "es_n64": ("es", 64, 4, "none", 0.0),
    "es_n16_full": ("es", 16, 0, "none", 0.0),
    "awd_n4": ("es", 4, 4, "l2", 75.0),
    "grpo": ("grpo", 0, 0, "", 0.0),
}
ITERATIONS = 12
PROMPTS = 16
PRIOR_TASKS = ("piqa", "arc_challenge", "mmlu_pro")


def parse(arg: str | None) -> tuple[str, int]:
    """'es_n16_s1' -> ('es_n16', 1); a bare arm is seed 0."""
    arm, _, seed = (arg or "").rpartition("_s")
    if arm not in ARMS or not seed.isdigit():
        arm, seed = arg or "", "0"
    if arm not in ARMS:
        raise ValueError(
            f"configs/findings.py:{arg} is not an arm; choose one of {list(ARMS)}, with an "
            "optional seed suffix _s<k>"
        )
    return arm, int(seed)


def get_config(arg=None):
    arm, seed = parse(arg)
    method, n, rank, kind, lam = ARMS[arm]
    c = base(method)
    c.workdir = f"runs/findings/{arm}_s{seed}"
    c.model.name = "smollm2-135m-instruct"
    c.model.compute_dtype = "float32"
    c.task.name = "rules"
    c.task.num_train = PROMPTS
    c.task.max_new_tokens = 64
    if method == "es":
        c.es.population_size = n
        c.es.sigma = 1e-3
        c.es.alpha = 2e-3
        c.es.noise_rank = rank
        c.es.num_iterations = ITERATIONS
        c.es.seed = seed
        c.awd.kind, c.awd.lam = kind, lam
        c.distributed.cpu_devices = 2  # CPU: two members generate at once
        if n > 16:
            # es.members_per_batch=0 picks as many as the memory plan fits in each CPU device's
            # share of the host (28 of 32 here); es_n64 then reached 24.3 GB resident of the
            # host's 25 GB and was OOM-killed, an evaluation running beside it (2026-12-06; its
            # plan said 2 devices x 9.3 GiB: the plan runs about 30 % under the resident size).
            # 16 at a time: how many generate at once, not what they are (a resumable key).
            c.es.members_per_batch = 16
    else:
        c.grpo.num_steps = ITERATIONS
        c.grpo.prompts_per_step = PROMPTS
        c.grpo.group_size = 4
        c.grpo.mini_batch_size = 4  # 4 optimizer steps per rollout
        c.grpo.micro_batch_size = 8
        c.grpo.generate_batch_size = 64
        c.grpo.learning_rate = 1e-5
        c.grpo.seed = seed
    c.eval.interval = ITERATIONS  # the target's held-out accuracy at the start and the end
    c.eval.num_examples = 128
    c.eval.batch_size = 64
    c.checkpoint.interval = ITERATIONS
    c.checkpoint.max_to_keep = None
    c.log.progress = True
    return c
