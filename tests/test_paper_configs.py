"""The paper's configs (configs/paper.py, configs/grpo_paper.py) and evaluation protocol
(`experiments.evaluate --protocol paper`) against the reference's scripts, kschweig/es-awd:
es.py, run.sh, grpo_experiments/*.sh, evaluation/*.

Every config is built and checked as the trainer does before it loads a model; the values
asserted here were read from the reference's files.
"""

import pytest

from configs import common, grpo_paper, paper
from esawd import models, settings, tasks
from esawd.analysis import forgetting
from experiments import evaluate as evaluate_cli

# evaluation/plot_lambda_ablation.ipynb: the runs of RUN_GROUPS["l1"] and RUN_GROUPS["l2"].
REFERENCE_L1 = [0.0001, 0.0003, 0.0005, 0.001, 0.003, 0.005, 0.007, 0.01, 0.013, 0.02, 0.03, 0.05]
REFERENCE_L2 = [0.05, 0.1, 0.3, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0]
# grpo_experiments/: grpo_<model>_<task>_s<seed>.sh -> (trainer.save_freq, trainer.test_freq)
REFERENCE_GRPO_SCRIPTS = {
    "qwen_1.5b_countdown_s42": (25, 25), "qwen_1.5b_countdown_s43": (500, 25),
    "qwen_1.5b_countdown_s44": (500, 25), "qwen_1.5b_proofwriter_s42": (500, 500),
    "qwen_1.5b_proofwriter_s43": (500, 500), "qwen_1.5b_proofwriter_s44": (500, 500),
    "qwen_3b_countdown_s42": (25, 25), "qwen_3b_countdown_s43": (500, 25),
    "qwen_3b_countdown_s44": (500, 25), "qwen_3b_gsm8k_s42": (25, 25),
    "qwen_3b_proofwriter_s42": (25, 25), "qwen_3b_proofwriter_s43": (500, 500),
    "qwen_3b_proofwriter_s44": (500, 500),
    **{
        f"{m}_{t}_s{s}": (500, 500)
        for m in ("qwen_7b", "llama_3b") for t in ("countdown", "proofwriter") for s in (42, 43, 44)
    },
}  # fmt: skip
HUB = {
    "qwen_1.5b": "qwen2.5-1.5b-instruct", "qwen_3b": "qwen2.5-3b-instruct",
    "qwen_7b": "qwen2.5-7b-instruct", "llama_3b": "llama-3.2-3b-instruct",
}  # fmt: skip


def built(c, tmp_path):
    """The settings of config `c` as the trainer checks them (data_dir: any existing folder)."""
    c.task.data_dir = str(tmp_path)  # the whole test split (eval.num_examples=-1) needs files
    s = settings.from_config(c)
    settings.check(s)
    return s


# ----- ES ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", paper.variants())
def test_es_paper_configs_build_with_the_references_settings(variant, tmp_path):
    s = built(paper.get_config(variant), tmp_path)
    assert (s.es.sigma, s.es.alpha, s.es.num_iterations, s.es.antithetic) == (
        1e-3,
        5e-4,
        500,
        False,
    )
    assert (s.task.num_train, s.task.max_new_tokens) == (200, 1024)
    assert s.model.name in models.PRESETS and s.model.compute_dtype == "float16"
    assert (s.eval.interval, s.eval.num_examples) == (25, tasks.ALL_EXAMPLES)
    assert s.es.seed == int(variant.rsplit("_s", 1)[1]) and s.es.seed in (0, 1)
    assert s.task.name == variant.split("_")[0]
    assert s.es.population_size == (int(variant.split("_n")[1][:3]) if "_n" in variant else 30)
    if "_awd_l2" in variant:
        assert (s.awd.kind, s.awd.lam) == ("l2", 10.0)
    elif "_awd_l1" in variant:
        assert (s.awd.kind, s.awd.lam) == ("l1", 0.01)
    elif "_l1_" in variant or "_l2_" in variant:
        assert f"_{s.awd.kind}_{s.awd.lam:g}_" in variant
    else:
        assert s.awd.kind == "none"


def test_es_paper_configs_hold_every_reference_run():
    runs = paper.RUNS
    ablation = {k: r for k, r in runs.items() if "_l1_" in k or "_l2_" in k}
    assert sorted(r["lam"] for r in ablation.values() if r["kind"] == "l1") == REFERENCE_L1
    assert sorted(r["lam"] for r in ablation.values() if r["kind"] == "l2") == REFERENCE_L2
    assert all(
        (r["task"], r["model"], r["population_size"]) == ("countdown", "qwen3b", 30)
        for r in ablation.values()
    )
    # The influence figure's ES runs: plain ES, N=30, on Countdown and ProofWriter, four models.
    for task in ("countdown", "proofwriter"):
        for model in ("qwen1.5b", "qwen3b", "qwen7b", "llama3b"):
            r = runs[f"{task}_{model}_es"]
            assert (r["kind"], r["population_size"]) == ("none", 30)
    for name in ("countdown_qwen3b_n128", "countdown_qwen3b_n256", "gsm8k_qwen3b_es"):
        assert name in runs
    # the variant names the tests and docs use keep working
    for name in ("countdown_qwen3b_awd_l2", "gsm8k_qwen3b_es", "proofwriter_qwen3b_awd_l2"):
        assert paper.get_config(name).workdir == f"runs/{name}_s0"


def test_es_seeds_default_to_the_first_and_bad_names_list_the_valid_ones():
    assert paper.get_config("countdown_qwen3b_es").es.seed == 0
    assert paper.get_config("countdown_qwen3b_es_s1").es.seed == 1
    for bad in ("countdown_qwen3b_es_s42", "countdown_qwen3b_l2_11", None):
        with pytest.raises(
            ValueError, match=r"not a variant.*seed in \(0, 1\).*countdown_qwen3b_es"
        ):
            paper.get_config(bad)


def test_reference_suffix_turns_on_both_reproduction_switches(tmp_path):
    plain = built(paper.get_config("countdown_qwen3b_awd_l2_s1"), tmp_path)
    assert (plain.es.precision, plain.es.noise_sharing) == ("float32", "none")
    s = built(paper.get_config("countdown_qwen3b_awd_l2_s1_reference"), tmp_path)
    assert (s.es.precision, s.es.noise_sharing, s.es.reference_engines) == (
        "reference_float16", "reference", 8,
    )  # fmt: skip
    assert (s.es.seed, s.awd.lam, s.model.compute_dtype) == (1, 10.0, "float16")
    assert s.workdir == "runs/countdown_qwen3b_awd_l2_s1_reference"
    with pytest.raises(ValueError, match="not a variant"):
        paper.get_config("countdown_qwen3b_awd_l9_reference")


# ----- GRPO -------------------------------------------------------------------------------


def script_of(variant: str) -> str:
    task, model, seed = grpo_paper.parse(variant)
    family = "llama" if model.startswith("llama") else "qwen"
    size = model.removeprefix(family)
    return f"{family}_{size}_{task}_s{seed}"


def test_grpo_variants_are_the_references_scripts():
    assert sorted(script_of(v) for v in grpo_paper.variants()) == sorted(REFERENCE_GRPO_SCRIPTS)


@pytest.mark.parametrize("variant", grpo_paper.variants())
def test_grpo_paper_configs_build_with_the_scripts_settings(variant, tmp_path):
    s = built(grpo_paper.get_config(variant), tmp_path)
    g = s.grpo
    assert (g.prompts_per_step, g.group_size, g.learning_rate, g.kl_coef) == (200, 30, 1e-6, 1e-3)
    assert (g.mini_batch_size, g.num_steps, g.temperature) == (32, 500, 1.0)
    assert (s.task.max_new_tokens, s.task.num_train) == (1024, 200)
    script = script_of(variant)
    assert s.model.name == HUB["_".join(script.split("_")[:2])]
    assert g.seed == int(script.rsplit("_s", 1)[1])
    assert (s.checkpoint.interval, s.eval.interval) == REFERENCE_GRPO_SCRIPTS[script]
    assert s.checkpoint.max_to_keep is None and s.eval.num_examples == tasks.ALL_EXAMPLES
    assert s.model.compute_dtype == "bfloat16"


def test_grpo_seed_defaults_to_the_first_and_bad_names_are_refused():
    assert grpo_paper.get_config("countdown_qwen3b").grpo.seed == 42
    assert grpo_paper.get_config("proofwriter_llama3b_s44").grpo.seed == 44
    for bad in ("gsm8k_qwen3b_s43", "countdown_qwen3b_s0", "gsm8k_qwen7b", "", None):
        with pytest.raises(ValueError, match="not a variant.*countdown_qwen1.5b_s42"):
            grpo_paper.get_config(bad)


# ----- precision, the whole test split -----------------------------------------------------


def test_paper_precision_is_the_references():
    assert common.paper_base("es").model.compute_dtype == "float16"  # run.sh --precision float16
    assert common.paper_base("grpo").model.compute_dtype == "bfloat16"  # verl's default


def test_whole_test_split_needs_files(tmp_path):
    c = paper.get_config("countdown_qwen3b_es")
    c.workdir = str(tmp_path / "run")
    with pytest.raises(settings.ConfigError, match="eval.num_examples=-1.*generated"):
        settings.check(settings.from_config(c))  # no data_dir: procedural Countdown
    c.eval.num_examples = -2
    c.task.data_dir = str(tmp_path)
    with pytest.raises(settings.ConfigError, match="num_examples >= -1"):
        settings.check(settings.from_config(c))
    examples = list(range(3000))
    assert tasks.eval_subset(examples, size=tasks.ALL_EXAMPLES) == examples


# ----- the evaluation protocol -------------------------------------------------------------


def test_paper_protocol_resolves_to_the_references_values():
    args = evaluate_cli.parser().parse_args(["--workdir", "x", "--protocol", "paper"])
    s = evaluate_cli.settings_for(args, {"task": {"name": "proofwriter"}})
    # run_forgetting.sh / run_kl_divergence.sh: all seven datasets, the target's included
    assert s.tasks == forgetting.PAPER_TASKS and len(s.tasks) == 7
    assert set(s.tasks) == {*tasks.PRIOR_TASKS, "countdown", "gsm8k", "proofwriter"}
    assert s.num_examples == 2048  # evaluate_forgetting.py --subset_size
    assert s.max_new_tokens == 1024  # utils.generate_rollouts(max_tokens=1024), every task
    assert s.stride == 25  # es.py --eval_interval; utils.should_evaluate adds the last
    assert (s.kl_prompts, s.kl_max_new_tokens, s.kl_selection) == (50, 256, "reference")
    # a flag given on the command line wins over the protocol
    args = evaluate_cli.parser().parse_args(
        ["--workdir", "x", "--protocol", "paper", "--stride", "5", "--tasks", "target,piqa"]
    )
    s = evaluate_cli.settings_for(args, {"task": {"name": "gsm8k"}})
    assert (s.stride, s.tasks, s.kl_prompts) == (5, ("gsm8k", "piqa"), 50)
    # ours: the run's target and the four prior tasks at every checkpoint
    args = evaluate_cli.parser().parse_args(["--workdir", "x"])
    s = evaluate_cli.settings_for(args, {"task": {"name": "countdown"}})
    assert (s.tasks, s.stride) == (("countdown", *tasks.PRIOR_TASKS), 0)


# ----- a tiny dry run -----------------------------------------------------------------------


@pytest.mark.slow
def test_one_iteration_of_a_lambda_ablation_config_on_a_tiny_model(
    tmp_path, request, varied_reward
):
    """The config as shipped, in the paper's float16, on the tiny Qwen2-shaped model and
    procedural Countdown (no data needed). The other families' dry runs, on the benchmark files:
    test_trainer.py and test_grpo.py, test_paper_configs_tiny_dry_run."""
    import jax
    from tiny_model import tiny_train

    from esawd.rundir import RunDir

    # varied_reward (conftest): a reward the random tiny model's text moves, restored after
    c = paper.get_config("countdown_qwen3b_l2_100_s1")
    c.workdir = str(tmp_path / "run")
    c.model.name = str(request.getfixturevalue("tiny_qwen2_dir"))
    c.task.num_train, c.task.max_new_tokens = 2, 3
    c.eval.num_examples, c.eval.interval = 2, 1  # procedural Countdown: no whole test split
    c.es.population_size, c.es.num_iterations = 2, 1
    c.log.progress = c.log.tensorboard = c.log.summary = c.export = False
    params = tiny_train(c)
    assert c.model.compute_dtype == "float16"
    assert all(x.dtype == jax.numpy.float32 for x in jax.tree.leaves(params))  # masters
    rows = RunDir(c.workdir).metrics.rows()
    assert rows[-1]["iteration"] == 1 and "eval/accuracy" in rows[-1]
    (log,) = RunDir(c.workdir).es_log.rows()
    assert (log["kind"], log["lam"]) == ("l2", 100.0)
