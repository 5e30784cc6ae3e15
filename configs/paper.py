"""The paper's ES runs (Schweighofer et al. 2026), one variant per `:arg`, as the reference
(github.com/kschweig/es-awd) ran them.

    python -m experiments.run --config configs/paper.py:countdown_qwen3b_awd_l2_s0 \\
        --config.task.data_dir=DATA --config.workdir=runs/countdown_qwen3b_awd_l2_s0
    python -m experiments.evaluate --workdir runs/countdown_qwen3b_awd_l2_s0 \\
        --data_dir DATA --protocol paper      # the reference's forgetting + KL evaluation

DATA is the folder holding countdown/, gsm8k/, proofwriter/ and the prior tasks (the
reference's files; e.g. ../shared/data here). Weights come from the Hugging Face hub. Every
variant: sigma=1e-3, alpha=5e-4, N=30 unless named, no mirrored sampling, greedy decoding of
at most 1024 tokens on the 200 training prompts, T=500, computed in float16
(`configs/common.py:paper_base`), and the reference's in-training evaluation: the whole test
split of the target (countdown 2000, gsm8k 500, proofwriter 1000 problems) every 25
iterations (`eval.num_examples=-1`, `eval.interval=25`; `--config.eval.num_examples=0` skips
it, `experiments.evaluate` computes the same rows afterwards from the ES log).

A variant is `<run>_s<seed>`; `<run>` alone is its first seed, s0. Seeds: the paper's ES runs
used `--global_seed 0` (all runs below) and 1 (the plain-ES baseline of the main figure and the
lambda ablation, countdown_qwen3b_es_s1). The reference draws iteration t's member seeds from
`np.random.default_rng((global_seed or 42) + t)` (es.py, l. 322), so its seed 0 is its seed 42,
and its seed-1 run meets seed 0's member seeds 41 iterations later. Our noise is JAX's threefry
(`es.iteration_seeds(es.seed, t)`, then per-leaf keys), not torch's generator, so a seed number
here reproduces the protocol (two independent seeds, the one the paper names), never the
reference's noise bits; `es.seed` is the number given.

A run is `<task>_<model>_<arm>`; models: qwen1.5b, qwen3b, qwen7b = qwen2.5-{1.5b,3b,7b}-instruct,
llama3b = llama-3.2-3b-instruct.

| run | N | AWD | the reference's run |
|---|---|---|---|
| countdown_qwen3b_es | 30 | none | s0 and s1 |
| countdown_qwen3b_awd_l2 | 30 | l2, lam=10 | s0 |
| countdown_qwen3b_awd_l1 | 30 | l1, lam=0.01 | s0 |
| countdown_qwen3b_n128, countdown_qwen3b_n256 | 128, 256 | none | s0 |
| {gsm8k,proofwriter}_qwen3b_{es,awd_l2} | 30 | none / l2, lam=10 | es s0 |
| {countdown,proofwriter}_{qwen1.5b,qwen7b,llama3b}_{es,awd_l2} | 30 | none / l2, lam=10 | es s0 |
| countdown_qwen3b_l1_<lam> | 30 | l1, lam | s0 |
| countdown_qwen3b_l2_<lam> | 30 | l2, lam | s0 |

The last two rows are the lambda ablation (evaluation/plot_lambda_ablation.ipynb), lam one of
L1_LAMBDAS (12 values, 1e-4 to 0.05) or L2_LAMBDAS (13 values, 0.05 to 100); its baseline is
countdown_qwen3b_es_s1. countdown_qwen3b_l2_10 and countdown_qwen3b_l1_0.01 are the same runs
as countdown_qwen3b_awd_l2 and countdown_qwen3b_awd_l1. The {es} runs on countdown and
proofwriter of the four models are the influence figure's ES runs
(evaluation/plot_influence.ipynb, create_latex_table.ipynb); the AWD runs marked without a
reference run are ours.

Where the reference differs and we keep ours by default: it reseeds one generator per tensor
of vLLM's fused layout (with `--caching`, run.sh), so tensors share noise; and it keeps float16
weights changed in place, which leaves a perturb/restore residue and gives anchored weight
decay a dead zone (docs/algorithm.md measures both). A `_reference` suffix on any variant
(`countdown_qwen3b_awd_l2_s0_reference`) turns on both reproduction switches:
`es.noise_sharing="reference"` and `es.precision="reference_float16"` with the reference's
8 engines.
"""

from configs.common import paper_base

MODELS = {
    "qwen1.5b": "qwen2.5-1.5b-instruct",
    "qwen3b": "qwen2.5-3b-instruct",
    "qwen7b": "qwen2.5-7b-instruct",
    "llama3b": "llama-3.2-3b-instruct",
}
AWD = {"es": ("none", 0.0), "awd_l2": ("l2", 10.0), "awd_l1": ("l1", 0.01)}
# The lambda ablation's values, read from evaluation/plot_lambda_ablation.ipynb's run names.
L1_LAMBDAS = (1e-4, 3e-4, 5e-4, 1e-3, 3e-3, 5e-3, 7e-3, 0.01, 0.013, 0.02, 0.03, 0.05)
L2_LAMBDAS = (0.05, 0.1, 0.3, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
SEEDS = (0, 1)


def _runs() -> dict[str, dict]:
    """run name -> {task, model, population_size, kind, lam}."""
    out = {}

    def add(task, model, n=30, awd="es", kind=None, lam=None):
        name = f"{task}_{model}_{awd}" if n == 30 else f"{task}_{model}_n{n}"
        kind, lam = (kind, lam) if kind else AWD[awd]
        out[name] = {"task": task, "model": model, "population_size": n, "kind": kind, "lam": lam}

    for awd in AWD:
        add("countdown", "qwen3b", awd=awd)
    add("countdown", "qwen3b", n=128)
    add("countdown", "qwen3b", n=256)
    for task in ("gsm8k", "proofwriter"):
        for awd in ("es", "awd_l2"):
            add(task, "qwen3b", awd=awd)
    for task in ("countdown", "proofwriter"):
        for model in ("qwen1.5b", "qwen7b", "llama3b"):
            for awd in ("es", "awd_l2"):
                add(task, model, awd=awd)
    for kind, lams in (("l1", L1_LAMBDAS), ("l2", L2_LAMBDAS)):
        for lam in lams:
            add("countdown", "qwen3b", awd=f"{kind}_{lam:g}", kind=kind, lam=lam)
    return out


RUNS = _runs()


def variants() -> list[str]:
    """Every variant name with its seed (`<run>` alone also works: seed s0)."""
    return [f"{run}_s{seed}" for run in RUNS for seed in SEEDS]


def parse(arg: str | None) -> tuple[str, int]:
    """(run, seed) of a variant name; a clear error listing the valid ones otherwise."""
    run, seed = arg or "", SEEDS[0]
    head, _, tail = run.rpartition("_s")
    if head in RUNS and tail.isdigit() and int(tail) in SEEDS:
        run, seed = head, int(tail)
    if run not in RUNS:
        raise ValueError(
            f"configs/paper.py:{arg} is not a variant; choose <run> or <run>_s<seed> with seed "
            f"in {SEEDS} and run one of {list(RUNS)}"
        )
    return run, seed


REFERENCE_SUFFIX = "_reference"


def get_config(arg=None):
    reproduce = bool(arg) and arg.endswith(REFERENCE_SUFFIX)
    run, seed = parse(arg[: -len(REFERENCE_SUFFIX)] if reproduce else arg)
    r = RUNS[run]
    c = paper_base()
    c.workdir = f"runs/{run}_s{seed}"
    c.task.name = r["task"]
    c.model.name = MODELS[r["model"]]
    c.es.population_size = r["population_size"]
    c.es.seed = seed
    c.awd.kind, c.awd.lam = r["kind"], r["lam"]
    c.eval.interval = 25  # es.py's --eval_interval default
    c.eval.num_examples = -1  # the whole test split, as es.py evaluates
    if reproduce:  # the reference's noise layout and float16 in-place dynamics
        c.workdir += REFERENCE_SUFFIX
        c.es.noise_sharing = "reference"
        c.es.precision = "reference_float16"
        c.es.reference_engines = 8  # run.sh: --num_engines 8
    return c
