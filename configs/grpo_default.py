"""The embedded GRPO run: SmolLM2-135M-Instruct on procedural Countdown, CPU-sized.

    python -m experiments.run --config configs/grpo_default.py --config.workdir runs/grpo_default

4 prompts per step from 8 training prompts, groups of 4 completions at temperature 1, two
AdamW updates per step (mini-batches of 2 prompts, so the second is off-policy and clipping
is live), 4 steps with evaluation and checkpoints every 2: a few minutes on 2 CPU cores.
`grpo.num_steps` sets the number of steps. Same run directory as the ES runs.
"""

from configs.common import base


def get_config(arg=None):
    c = base("grpo")
    c.workdir = "runs/grpo_default"
    c.model.name = "smollm2-135m-instruct"
    c.model.compute_dtype = "float32"
    c.task.name = "countdown"
    c.task.num_train = 8
    c.task.max_new_tokens = 48
    c.grpo.num_steps = 4
    c.grpo.prompts_per_step = 4
    c.grpo.group_size = 4
    c.grpo.learning_rate = 1e-5
    c.grpo.mini_batch_size = 2
    c.grpo.micro_batch_size = 4
    c.grpo.generate_batch_size = 16
    c.eval.interval = 2
    c.eval.num_examples = 8
    c.eval.batch_size = 8
    c.checkpoint.interval = 2
    return c
