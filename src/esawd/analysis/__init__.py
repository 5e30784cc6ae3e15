"""The forgetting analysis of run directories (paper Sec. 5): task accuracy, KL(base || tuned)
and weight drift of theta_t over training, for ES, ES + AWD and GRPO runs alike.

    from esawd import analysis
    analysis.analyze_run("runs/x", analysis.AnalysisSettings(tasks=("piqa",), data_dir=DATA))

`python -m experiments.evaluate` is the command line. The parts, each usable alone:
`forgetting` (settings, task examples, `analyze_run`), `thetas` (theta_t from checkpoints or
ES replay), `drift` (weight drift), `kl` (KL on the base model's samples), `likelihood`
(prior-task accuracy by option log-likelihood, no generation) and `stats` (intervals for
accuracies: Wilson, paired differences, McNemar). "Analysis" here is distinct from the
trainer's held-out accuracy (`scoring.heldout_accuracy`, which the analysis calls per task) and
from ES population fitness.
"""

from esawd.analysis import likelihood, stats
from esawd.analysis.drift import MODULES, has_tied_head, module_of, weight_drift
from esawd.analysis.errors import AnalysisError
from esawd.analysis.forgetting import (
    DRIFT_FILE,
    FORGETTING_FILE,
    KL_FILE,
    SAMPLES_DIR,
    SETTINGS_FILE,
    AnalysisSettings,
    analyze_run,
    check_analysis_settings,
    clear_analysis,
    eval_split,
    read_run_config,
    run_label,
    run_method,
    task_examples,
)
from esawd.analysis.kl import KLSamples, kl_divergence, log_probs, sample_base
from esawd.analysis.stats import (
    examples_needed,
    kl_interval,
    mcnemar_p,
    mcnemar_power,
    paired_difference,
    wilson_interval,
)
from esawd.analysis.thetas import Thetas, format_ranges, select_iterations

__all__ = [
    "DRIFT_FILE",
    "FORGETTING_FILE",
    "KL_FILE",
    "MODULES",
    "SAMPLES_DIR",
    "SETTINGS_FILE",
    "AnalysisError",
    "AnalysisSettings",
    "KLSamples",
    "Thetas",
    "analyze_run",
    "check_analysis_settings",
    "clear_analysis",
    "eval_split",
    "format_ranges",
    "has_tied_head",
    "kl_divergence",
    "kl_interval",
    "likelihood",
    "log_probs",
    "examples_needed",
    "mcnemar_p",
    "mcnemar_power",
    "module_of",
    "paired_difference",
    "read_run_config",
    "run_label",
    "run_method",
    "sample_base",
    "select_iterations",
    "stats",
    "task_examples",
    "weight_drift",
    "wilson_interval",
]
