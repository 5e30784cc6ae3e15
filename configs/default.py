"""The embedded default: ES + L2 AWD on SmolLM2-135M-Instruct, procedural rule reasoning, CPU-sized.

    python -m experiments.run --config configs/default.py --config.workdir runs/default

`make run` runs this. The model comes from PyPI on first use; the task (`rules`: ProofWriter's
prompt and reward on generated theories) needs no download, and its held-out split never
shares a problem with the training prompts. Why this task: docs/results.md, "An offline target
that learns" (the base model gets about 1 in 10 right, and members' rewards differ at the
paper's sigma; on Countdown every member scores 0).

What it does: N = 8 members with low-rank noise (r = 4, the fastest setting that learns,
docs/results.md "Low-rank noise") on 16 training prompts, sigma = 1e-3 as in the paper,
alpha = 2e-3 (the paper's 5e-4 moves too little in 12 iterations), L2 AWD with the paper's
lam = 10. Held-out accuracy on 128 problems at the start and the end, paired, with its 95 %
interval; weight drift and KL(base || tuned) on arithmetic prompts, a task it is not trained
on. At the end: a table, `summary.png` and `summary.json` in the run directory, and the tuned
model in `final/`. About 10 minutes on 2 CPU cores (docs/results.md has the measured run).
"""

from configs.common import base


def get_config(arg=None):
    c = base()
    c.workdir = "runs/default"
    c.model.name = "smollm2-135m-instruct"
    c.model.compute_dtype = "float32"
    c.task.name = "rules"
    c.task.num_train = 16
    c.task.max_new_tokens = 64
    c.es.population_size = 8
    c.es.sigma = 1e-3
    c.es.alpha = 2e-3
    c.es.noise_rank = 4
    c.es.num_iterations = 12
    c.awd.kind, c.awd.lam = "l2", 10.0
    c.eval.interval = 12  # held-out accuracy at the start and the end
    c.eval.num_examples = 128
    c.eval.batch_size = 64
    c.eval.kl_task = "arithmetic"
    c.eval.kl_prompts = 16
    c.eval.kl_max_new_tokens = 32
    c.checkpoint.interval = 6
    c.distributed.cpu_devices = 2  # CPU: two members generate at once (no effect on GPUs)
    return c
