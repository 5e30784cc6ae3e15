"""Continual fine-tuning on the embedded model: a sequence of stages run by one command.

    python -m experiments.continual --config configs/continual.py:awd_deployed \\
        --config.workdir=runs/continual_awd_deployed
    python -m experiments.continual --summary runs/continual_es runs/continual_awd_deployed \\
        --out runs/continual_figures        # the table and the figure of several sequences

Stages (`continual.stages`, `task:iterations[:kind=lam]`, comma-separated): `rules` then
`arithmetic`, the two offline tasks (docs/tasks.md), each a resumable run directory under the
workdir, the next starting from the previous one's export. After every stage, every task of
the sequence and `continual.eval_tasks` are evaluated (`continual.eval_examples` problems,
`continual.eval_max_new_tokens` tokens). The arms:

| arm | what |
|---|---|
| es | plain ES: no anchored weight decay |
| awd_deployed | ES + L2 AWD, every stage anchored to the deployed model (stage 0's theta_0) |
| awd_previous | ES + L2 AWD, each stage anchored to the model it starts from |
| grpo | GRPO, each stage's KL to the model it starts from |

The rest is `configs/default.py`'s CPU-sized setting (N = 8, rank-4 noise, 16 prompts,
alpha = 2e-3, lam = 10); `esawd.continual` documents the summary (ACC, BWT, FWT).
"""

from ml_collections import ConfigDict

from configs import default
from configs.common import base

ARMS = ("es", "awd_deployed", "awd_previous", "grpo")


def get_config(arg="awd_deployed"):
    if arg not in ARMS:
        raise ValueError(f"configs/continual.py:{arg} is not an arm; choose one of {ARMS}")
    if arg == "grpo":
        c = base("grpo")
        c.model.name = "smollm2-135m-instruct"
        c.task.num_train, c.task.max_new_tokens = 16, 64
        c.grpo.prompts_per_step, c.grpo.group_size, c.grpo.mini_batch_size = 8, 4, 4
        c.grpo.micro_batch_size, c.grpo.learning_rate = 8, 1e-6
        c.eval.interval, c.eval.num_examples, c.checkpoint.interval = 0, 0, 6
    else:
        c = default.get_config()
        c.awd.kind, c.awd.lam = ("none", 0.0) if arg == "es" else ("l2", 10.0)
        c.eval.interval, c.eval.num_examples = 0, 0  # the sequence evaluates after each stage
        c.eval.kl_task = ""
    c.workdir = f"runs/continual_{arg}"
    c.log.summary = False
    c.continual = ConfigDict(
        {
            "stages": "rules:12,arithmetic:12",
            "anchor": "previous" if arg in ("awd_previous", "grpo") else "deployed",
            "eval_tasks": "",  # more tasks to evaluate after every stage, comma-separated
            "eval_examples": 64,
            "eval_max_new_tokens": 64,
            "label": arg,
        }
    )
    return c
