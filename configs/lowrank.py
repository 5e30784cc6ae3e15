"""Low-rank vs full-rank ES on a real target (docs/results.md, "Low-rank noise"): does EGGROLL's
noise learn as fast, per iteration and per second?

    python -m experiments.run --config configs/lowrank.py:r4 \\
        --config.task.data_dir=DATA --config.workdir=runs/lowrank/r4

DATA is the folder holding proofwriter/ (e.g. ../shared/data here). The setting of
`configs/small_repro.py:es_n4` (ProofWriter, SmolLM2-135M-Instruct, sigma = 1e-3, alpha = 1e-3,
N = 4, 16 training prompts, 64 new tokens, plain ES so that only the noise differs), shortened
to T = 10 to fit four arms into one session on 2 CPU cores, with held-out accuracy on 64 test
examples at t = 0, 5 and 10. The arms differ only in `es.noise_rank`:

| variant | es.noise_rank |
|---|---|
| full | 0 (the paper's full-rank noise) |
| r1 | 1 |
| r4 | 4 |
| r16 | 16 |
"""

from configs.common import base

VARIANTS = {"full": 0, "r1": 1, "r4": 4, "r16": 16}


def get_config(arg=None):
    if arg not in VARIANTS:
        raise ValueError(
            f"configs/lowrank.py:{arg} is not a variant; choose one of {list(VARIANTS)}"
        )
    c = base()
    c.workdir = f"runs/lowrank/{arg}"
    c.model.name = "smollm2-135m-instruct"
    c.model.compute_dtype = "float32"
    c.task.name = "proofwriter"
    c.task.num_train = 16
    c.task.max_new_tokens = 64
    c.es.population_size = 4
    c.es.sigma = 1e-3
    c.es.alpha = 1e-3
    c.es.num_iterations = 10
    c.es.seed = 0
    c.es.noise_rank = VARIANTS[arg]
    c.awd.kind, c.awd.lam = "none", 0.0
    c.eval.interval = 5
    c.eval.num_examples = 64
    c.eval.batch_size = 64
    c.checkpoint.interval = 5
    c.checkpoint.max_to_keep = None  # every checkpoint, for experiments.evaluate (KL, drift)
    c.distributed.cpu_devices = 2  # CPU: two devices, as configs/default.py
    return c
