"""The small-scale reproduction on CPU (docs/results.md): ES vs ES + L2 AWD on SmolLM2-135M.

    python -m experiments.run --config configs/small_repro.py:es_n4 \\
        --config.task.data_dir=DATA --config.workdir=runs/small_repro/es_n4

DATA is the folder holding proofwriter/ (e.g. ../shared/data here). Target task: ProofWriter,
on which the base model has room to improve (about 10 % accuracy, docs/results.md has the
measurement that picked it). The paper's sigma=1e-3 and greedy decoding; 16 training prompts,
64 new tokens and T=20 to fit 2 CPU cores.

Scaling the paper down. With N members and T iterations, plain ES moves a weight the task does
not constrain by about alpha * sqrt(T / N). alpha=1e-3 makes that 2.2e-3 at N=4, T=20,
close to the paper's 2.0e-3 (alpha=5e-4, N=30, T=500), so the random walk reaches the
paper's size. L2 AWD with decay c = alpha * lam (applied after each update) ends that walk
at (1 - c) * sqrt((1 - (1 - c)^(2T)) / (T (1 - (1 - c)^2))) of plain ES's size: 0.44 for the
paper's c = 0.005, T = 500, and 0.36 here (lam=150, c = 0.15, T = 20), a little stronger.

| variant | N | AWD |
|---|---|---|
| es_n4 | 4 | none |
| awd_n4 | 4 | l2, lam=150 |
| es_n8 | 8 | none |
"""

from configs.common import base

VARIANTS = {"es_n4": (4, "none", 0.0), "awd_n4": (4, "l2", 150.0), "es_n8": (8, "none", 0.0)}


def get_config(arg=None):
    if arg not in VARIANTS:
        raise ValueError(
            f"configs/small_repro.py:{arg} is not a variant; choose one of {list(VARIANTS)}"
        )
    n, kind, lam = VARIANTS[arg]
    c = base()
    c.workdir = f"runs/small_repro/{arg}"
    c.model.name = "smollm2-135m-instruct"
    c.model.compute_dtype = "float32"
    c.task.name = "proofwriter"
    c.task.num_train = 16
    c.task.max_new_tokens = 64
    c.es.population_size = n
    c.es.sigma = 1e-3
    c.es.alpha = 1e-3
    c.es.num_iterations = 20
    c.es.seed = 0
    c.awd.kind, c.awd.lam = kind, lam
    c.eval.num_examples = 0  # held-out and prior tasks: python -m experiments.evaluate
    c.checkpoint.interval = 10
    c.checkpoint.max_to_keep = None  # keep every checkpoint for the forgetting analysis
    c.log.progress = True
    return c
