"""The paper's ES runs (Schweighofer et al. 2026), one variant per `:arg`.

    python -m experiments.run --config configs/paper.py:countdown_qwen3b_awd_l2 \\
        --config.task.data_dir=DATA --config.workdir=runs/countdown_qwen3b_awd_l2

DATA is the folder holding countdown/, gsm8k/, proofwriter/ (the reference's files; e.g.
../shared/data here). Weights come from the Hugging Face hub. Every variant: sigma=1e-3,
alpha=5e-4, greedy decoding, 200 training prompts, 1024 new tokens, T=500.

| variant | task | model | N | AWD |
|---|---|---|---|---|
| countdown_qwen3b_es | countdown | qwen2.5-3b-instruct | 30 | none |
| countdown_qwen3b_awd_l2 | countdown | qwen2.5-3b-instruct | 30 | l2, lam=10 |
| countdown_qwen3b_awd_l1 | countdown | qwen2.5-3b-instruct | 30 | l1, lam=0.01 |
| countdown_qwen3b_n128 | countdown | qwen2.5-3b-instruct | 128 | none |
| countdown_qwen3b_n256 | countdown | qwen2.5-3b-instruct | 256 | none |
| gsm8k_qwen3b_{es,awd_l2} | gsm8k | qwen2.5-3b-instruct | 30 | none / l2 |
| proofwriter_qwen3b_{es,awd_l2} | proofwriter | qwen2.5-3b-instruct | 30 | none / l2 |
| countdown_qwen1.5b_{es,awd_l2} | countdown | qwen2.5-1.5b-instruct | 30 | none / l2 |
| countdown_qwen7b_{es,awd_l2} | countdown | qwen2.5-7b-instruct | 30 | none / l2 |
| countdown_llama3b_{es,awd_l2} | countdown | llama-3.2-3b-instruct | 30 | none / l2 |
"""

from configs.common import paper_base

MODELS = {
    "qwen1.5b": "qwen2.5-1.5b-instruct",
    "qwen3b": "qwen2.5-3b-instruct",
    "qwen7b": "qwen2.5-7b-instruct",
    "llama3b": "llama-3.2-3b-instruct",
}
AWD = {"es": ("none", 0.0), "awd_l2": ("l2", 10.0), "awd_l1": ("l1", 0.01)}


def variants() -> list[str]:
    """Every variant name this file accepts."""
    out = [f"countdown_qwen3b_{a}" for a in AWD] + [
        "countdown_qwen3b_n128",
        "countdown_qwen3b_n256",
    ]
    out += [f"{t}_qwen3b_{a}" for t in ("gsm8k", "proofwriter") for a in ("es", "awd_l2")]
    out += [
        f"countdown_{m}_{a}" for m in ("qwen1.5b", "qwen7b", "llama3b") for a in ("es", "awd_l2")
    ]
    return out


def get_config(arg=None):
    if arg not in variants():
        raise ValueError(f"configs/paper.py:{arg} is not a variant; choose one of {variants()}")
    task, model, rest = arg.split("_", 2)
    c = paper_base()
    c.workdir = f"runs/{arg}"
    c.task.name = task
    c.model.name = MODELS[model]
    if rest.startswith("n"):
        c.es.population_size = int(rest[1:])
        rest = "es"
    c.awd.kind, c.awd.lam = AWD[rest]
    return c
