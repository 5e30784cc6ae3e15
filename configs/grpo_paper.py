"""The paper's GRPO runs (Schweighofer et al. 2026), one variant per `:arg`.

    python -m experiments.run --config configs/grpo_paper.py:countdown_qwen3b \\
        --config.task.data_dir=DATA --config.workdir=runs/grpo_countdown_qwen3b

DATA is the folder holding countdown/, gsm8k/, proofwriter/ (e.g. ../shared/data). Weights
come from the Hugging Face hub. Every variant: Qwen2.5-3B-Instruct, 200 prompts per step,
n=30 completions at temperature 1, AdamW lr 1e-6, k3 KL coefficient 1e-3 to theta_0,
mini-batches of 32 prompts, 1024 new tokens, 500 steps.

| variant | task |
|---|---|
| countdown_qwen3b | countdown |
| gsm8k_qwen3b | gsm8k |
| proofwriter_qwen3b | proofwriter |
"""

from configs.common import paper_base

TASKS = ("countdown", "gsm8k", "proofwriter")


def variants() -> list[str]:
    """Every variant name this file accepts."""
    return [f"{t}_qwen3b" for t in TASKS]


def get_config(arg=None):
    if arg not in variants():
        raise ValueError(
            f"configs/grpo_paper.py:{arg} is not a variant; choose one of {variants()}"
        )
    c = paper_base("grpo")  # the paper's settings are the schema's GRPO defaults
    c.workdir = f"runs/grpo_{arg}"
    c.task.name = arg.split("_")[0]
    c.model.name = "qwen2.5-3b-instruct"
    return c
