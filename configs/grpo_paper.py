"""The paper's GRPO runs (Schweighofer et al. 2026), one variant per `:arg`: the reference's
grpo_experiments/grpo_<model>_<task>_s<seed>.sh scripts (verl), one variant each.

    python -m experiments.run --config configs/grpo_paper.py:countdown_qwen3b_s42 \\
        --config.task.data_dir=DATA --config.workdir=runs/grpo_countdown_qwen3b_s42
    python -m experiments.evaluate --workdir runs/grpo_countdown_qwen3b_s42 \\
        --data_dir DATA --protocol paper      # the reference's forgetting + KL evaluation

DATA is the folder holding countdown/, gsm8k/, proofwriter/ and the prior tasks (e.g.
../shared/data). Weights come from the Hugging Face hub. A variant is `<task>_<model>_s<seed>`;
`<task>_<model>` alone is its first seed, s42. Every variant, as every script sets it: 200
prompts per step (data.train_batch_size, all 200 training prompts), n=30 completions
(rollout.n) at temperature 1 (verl's default), AdamW lr 1e-6, k3 ("low_var_kl") KL
coefficient 1e-3 to theta_0 as a loss term, mini-batches of 32 prompts, at most 1024 new
tokens, 500 steps (500 epochs of 200 prompts), computed in bfloat16 (verl's default). The
held-out evaluation runs greedy on the whole test split every `trainer.test_freq` steps and
checkpoints are written every `trainer.save_freq` steps, as each script sets them (below),
all kept (`checkpoint.max_to_keep=None`) because the forgetting analysis evaluates GRPO at its
checkpoints: at 3B a checkpoint with AdamW's moments is about 37 GB.

A variant is named after its script; models: qwen1.5b, qwen3b, qwen7b =
qwen2.5-{1.5b,3b,7b}-instruct, llama3b = llama-3.2-3b-instruct.

| variant | checkpoint.interval (save_freq) | eval.interval (test_freq) |
|---|---|---|
| countdown_qwen1.5b_s42, countdown_qwen3b_s42 | 25 | 25 |
| countdown_qwen1.5b_s{43,44}, countdown_qwen3b_s{43,44} | 500 | 25 |
| gsm8k_qwen3b_s42, proofwriter_qwen3b_s42 | 25 | 25 |
| proofwriter_qwen3b_s{43,44}, proofwriter_qwen1.5b_s{42,43,44} | 500 | 500 |
| {countdown,proofwriter}_{qwen7b,llama3b}_s{42,43,44} | 500 | 500 |

`grpo.seed` is the script's seed (data.seed and the FSDP seeds; the s42 scripts of Qwen 1.5B
and 3B on Countdown and 3B on GSM8K set none, so verl's defaults ran there). Our seed drives
JAX's prompt order and sampling keys, so a seed number reproduces the protocol, not the bits.

Set by the scripts and kept as ours because they change only memory or summation order:
ppo_micro_batch_size_per_gpu=4 (`grpo.micro_batch_size`, 8 sequences), log-prob micro-batches;
data.max_prompt_length=512 with filter_overlong_prompts (no paper prompt is that long, so
nothing is filtered). The rest are verl's defaults, which the schema's GRPO defaults follow
(docs/grpo.md): clip 0.2, token-mean loss, no entropy bonus, weight decay 0.01, gradient
clipping at 1.0.
"""

from configs.common import paper_base

MODELS = {
    "qwen1.5b": "qwen2.5-1.5b-instruct",
    "qwen3b": "qwen2.5-3b-instruct",
    "qwen7b": "qwen2.5-7b-instruct",
    "llama3b": "llama-3.2-3b-instruct",
}
SEEDS = (42, 43, 44)
# (task, model) -> {seed: (save_freq, test_freq)}, from grpo_experiments/*.sh
_FREQ_25_500 = {42: (25, 25), 43: (500, 25), 44: (500, 25)}
_ALL_500 = dict.fromkeys(SEEDS, (500, 500))
SCRIPTS: dict[tuple[str, str], dict[int, tuple[int, int]]] = {
    ("countdown", "qwen1.5b"): _FREQ_25_500,
    ("proofwriter", "qwen1.5b"): _ALL_500,
    ("countdown", "qwen3b"): _FREQ_25_500,
    ("gsm8k", "qwen3b"): {42: (25, 25)},
    ("proofwriter", "qwen3b"): {42: (25, 25), 43: (500, 500), 44: (500, 500)},
    ("countdown", "qwen7b"): _ALL_500,
    ("proofwriter", "qwen7b"): _ALL_500,
    ("countdown", "llama3b"): _ALL_500,
    ("proofwriter", "llama3b"): _ALL_500,
}


def variants() -> list[str]:
    """Every variant name with its seed (`<task>_<model>` alone also works: its first seed)."""
    return [f"{t}_{m}_s{seed}" for (t, m), seeds in SCRIPTS.items() for seed in seeds]


def parse(arg: str | None) -> tuple[str, str, int]:
    """(task, model, seed) of a variant name; a clear error listing the valid ones otherwise."""
    name, seed = arg or "", None
    head, _, tail = name.rpartition("_s")
    if tail.isdigit() and head.count("_") == 1:
        name, seed = head, int(tail)
    task, _, model = name.partition("_")
    seeds = SCRIPTS.get((task, model), {})
    seed = next(iter(seeds), None) if seed is None else seed
    if seed not in seeds:
        raise ValueError(
            f"configs/grpo_paper.py:{arg} is not a variant; choose one of {variants()} "
            "(or <task>_<model> for its first seed)"
        )
    return task, model, seed


def get_config(arg=None):
    task, model, seed = parse(arg)
    save_freq, test_freq = SCRIPTS[(task, model)][seed]
    c = paper_base("grpo")  # the scripts' settings are the schema's GRPO defaults
    c.workdir = f"runs/grpo_{task}_{model}_s{seed}"
    c.task.name = task
    c.model.name = MODELS[model]
    c.grpo.seed = seed
    c.eval.interval = test_freq
    c.eval.num_examples = -1  # verl validates on the whole test file
    c.checkpoint.interval = save_freq
    c.checkpoint.max_to_keep = None
    return c
