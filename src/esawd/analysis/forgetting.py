"""The forgetting analysis of a run directory (paper Sec. 5): task accuracy, KL(base || tuned)
and weight drift of theta_t over training, for ES, ES + AWD and GRPO runs alike.

    from esawd import analysis
    analysis.analyze_run("runs/x", analysis.AnalysisSettings(tasks=("piqa",), data_dir=DATA))

writes, inside the run directory (`python -m experiments.evaluate` is the command line):

    forgetting.jsonl     {iteration, task, accuracy, format_rate, reward, tokens, num_examples,
                          correct}; a task scored by option log-likelihood (`likelihood`)
                          as task "<name>:ll" {iteration, task, accuracy, num_examples,
                          num_options, scoring, correct}
    kl.jsonl             {iteration, task, kl, kl_prompt_avg, num_tokens, num_prompts,
                          prompt_sums, prompt_tokens}
    weight_drift.jsonl   {iteration, frobenius, relative, per_module, per_layer, mean_abs,
                          max_abs, num_params}
    kl_samples/<task>.npz   the base model's sampled continuations and their log-probs
    evaluate.json        the settings the rows were made with

theta_t comes from the checkpoint at t when there is one; otherwise, for ES, it is replayed
from the nearest earlier checkpoint (or theta_0) with the seeds and coefficients in
`es_log.jsonl`, which gives the parameters bitwise equal to what training had (`thetas.py`).
The analysis is resumable: rows already written are skipped, each (iteration, task) is
appended as soon as it is done, so an interrupted analysis loses at most the item it was on.

Protocol (as the reference's `evaluation/evaluate_forgetting.py`): greedy decoding with each
task's prompts, at most `num_examples` examples per task drawn with random.Random(2357)
(`tasks.eval_subset`), MMLU-Pro 5-shot. KL: `kl_prompts` prompts of each task (with
`kl_selection="reference"`, random.Random(2357).sample of the whole evaluation split, as the
reference's `evaluate_kl_divergence.py --subset_size 50`; `"first"`: the first `kl_prompts` of
the accuracy examples), one continuation each sampled from theta_0 at temperature 1 (at most
`kl_max_new_tokens` tokens), scored under theta_0 and theta_t; `kl` is the token-weighted k1
estimate sum(log p0 - log pt) / tokens, `kl_prompt_avg` the mean over prompts of each prompt's
per-token average, `prompt_sums` / `prompt_tokens` each prompt's summed difference and tokens
(for `stats.kl_interval`; `kl.py`). `likelihood` tasks are also (or only) scored without generation:
the option with the highest log-likelihood per character after a plain-text context is the
answer (lm-evaluation-harness's acc_norm, `likelihood.py`). Drift: ||theta_t - theta_0||
accumulated in float64, globally, per module type and per layer (`drift.py`).
`PAPER_PROTOCOL` holds the reference's whole protocol. This module holds the settings and the
job that runs them over one run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from esawd import models, scoring, tasks
from esawd.analysis.drift import weight_drift
from esawd.analysis.errors import AnalysisError
from esawd.analysis.kl import KLSamples, kl_divergence, log_probs, sample_base
from esawd.analysis.likelihood import choice_accuracy, row_key
from esawd.analysis.thetas import Thetas, format_ranges, select_iterations
from esawd.rundir import JsonlLog, RunDir
from esawd.settings import ConfigError

FORGETTING_FILE = "forgetting.jsonl"
KL_FILE = "kl.jsonl"
DRIFT_FILE = "weight_drift.jsonl"
SETTINGS_FILE = "evaluate.json"
SAMPLES_DIR = "kl_samples"
# Your own tasks in `tasks`: "jsonl:PATH" takes these options (AnalysisSettings.jsonl_options).
JSONL_PREFIX = "jsonl:"
JSONL_OPTIONS = ("checker", "system_prompt", "template", "prefill")

# Which prompts KL is measured on: "reference" draws random.Random(2357).sample(range(n), k)
# from the task's whole evaluation split of n examples (all of them when n <= k), as the
# reference's run_kl_divergence.sh (SUBSET_SIZE=50) does; "first" takes the first k of the
# accuracy examples, which for a split of at most 2048 is the file's first k rows.
KL_SELECTIONS = ("reference", "first")
# The selection of evaluations made before `kl_selection` existed (their evaluate.json lacks it).
LEGACY_KL_SELECTION = "first"

# The paper's seven tasks: the three targets (the two a run is not trained on count as prior
# tasks) and the four prior tasks, in the order of the reference's run_forgetting.sh.
PAPER_TASKS = (
    "countdown",
    "gsm8k",
    "proofwriter",
    "hellaswag",
    "piqa",
    "arc_challenge",
    "mmlu_pro",
)
# The reference's evaluation as AnalysisSettings fields (evaluation/run_forgetting.sh,
# evaluate_forgetting.py, run_kl_divergence.sh, evaluate_kl_divergence.py, utils.py): every
# task at iteration 0, every 25th (es.py's --eval_interval default) and the last; at most 2048
# examples a task (all of each target's test split: 2000, 500, 1000); greedy generation of at
# most 1024 tokens (utils.generate_rollouts' default) for every task; KL on 50 prompts, one
# temperature-1 base sample each of at most 256 tokens.
PAPER_PROTOCOL: dict[str, Any] = {
    "tasks": PAPER_TASKS,
    "num_examples": 2048,
    "max_new_tokens": 1024,
    "stride": 25,
    "kl_prompts": 50,
    "kl_max_new_tokens": 256,
    "kl_selection": "reference",
}


# ---------------------------------------------------------------------------------------
# Settings and the run being analyzed.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    tasks: tuple[str, ...]  # e.g. ("proofwriter", "piqa", "arc_challenge")
    # tasks scored by option log-likelihood, with the examples each: {"piqa": 1000}
    likelihood: Mapping[str, int] = dataclasses.field(default_factory=dict)
    data_dir: str = ""  # folder with <task>/ ("" = the run's task.data_dir, then the hub)
    num_examples: int = 2048  # per task, the reference's seeded subset for larger sets
    max_new_tokens: Mapping[str, int] | int = 1024  # one value, or per task
    batch_size: int = 32
    stride: int = 0  # evaluate iterations that are multiples of this (0: every checkpoint)
    iterations: tuple[int, ...] = ()  # explicit iterations instead of the stride
    kl: bool = True
    kl_prompts: int = 50
    kl_max_new_tokens: int = 256
    kl_seed: int = 0
    kl_selection: str = "reference"  # KL_SELECTIONS
    drift: bool = True
    model_cache_dir: str = ""  # "" = the run's model.cache_dir
    # checker, system_prompt, template, prefill of every "jsonl:PATH" task ("" keys: defaults)
    jsonl_options: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def tokens_for(self, task: str) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        if task not in self.max_new_tokens:
            raise AnalysisError(
                f"max_new_tokens has no value for {task!r}; give one per task "
                f"({', '.join(f'{k}={v}' for k, v in self.max_new_tokens.items())}) or one number."
            )
        return int(self.max_new_tokens[task])

    def row_settings(self) -> dict[str, Any]:
        """The settings that change what a row means (checked when an evaluation resumes)."""
        out = {
            "num_examples": self.num_examples,
            "max_new_tokens": {t: self.tokens_for(t) for t in self.tasks},
            "kl_prompts": self.kl_prompts,
            "kl_max_new_tokens": self.kl_max_new_tokens,
            "kl_seed": self.kl_seed,
            "kl_selection": self.kl_selection,
        }
        if self.likelihood:
            out["likelihood"] = {t: int(n) for t, n in self.likelihood.items()}
        if any(t.startswith(JSONL_PREFIX) for t in self.tasks):
            out["jsonl_options"] = {k: v for k, v in sorted(self.jsonl_options.items()) if v}
        return out


def check_analysis_settings(s: AnalysisSettings) -> None:
    """Refuse bad settings with the key, the value and what is valid."""
    unknown = [t for t in s.tasks if tasks.spec_kind(t) is None]
    if unknown or not (s.tasks or s.likelihood):
        raise AnalysisError(
            f"tasks={','.join(s.tasks)!r} is invalid: use a comma-separated subset of "
            f"{','.join(tasks.TASK_NAMES)}, your own tasks as jsonl:PATH or "
            "package.module:factory, and the run's target."
        )
    bad = sorted(set(s.jsonl_options) - set(JSONL_OPTIONS))
    if bad:
        raise AnalysisError(f"jsonl_options has {bad}; valid keys: {', '.join(JSONL_OPTIONS)}.")
    for key in ("num_examples", "batch_size", "kl_prompts", "kl_max_new_tokens"):
        if getattr(s, key) < 1:
            raise AnalysisError(f"{key}={getattr(s, key)} is invalid: it must be >= 1.")
    if s.kl_selection not in KL_SELECTIONS:
        raise AnalysisError(
            f"kl_selection={s.kl_selection!r} is invalid: use one of {', '.join(KL_SELECTIONS)}."
        )
    if s.stride < 0:
        raise AnalysisError(f"stride={s.stride} is invalid: use 0 (every checkpoint) or >= 1.")
    for t in s.tasks:
        if s.tokens_for(t) < 1:
            raise AnalysisError(f"max_new_tokens for {t} is {s.tokens_for(t)}; it must be >= 1.")
    for t, n in s.likelihood.items():
        if t not in tasks.TASK_NAMES or not tasks.get_task(t).has_choices:
            scorable = [x for x in tasks.TASK_NAMES if tasks.get_task(x).has_choices]
            raise AnalysisError(
                f"likelihood task {t!r} has no fixed options to score: use {', '.join(scorable)}."
            )
        if n < 1:
            raise AnalysisError(f"likelihood examples for {t} is {n}; it must be >= 1.")


def run_method(config: Mapping[str, Any]) -> str:
    """'es' or 'grpo': what trained the run (configs written before `method` existed: es)."""
    return str(config.get("method", "es"))


def run_label(config: Mapping[str, Any]) -> str:
    """A short legend label: 'ES N=4', 'ES+AWD L2 lam=100 N=4', 'ES N=8 rank 4', 'GRPO'."""
    if run_method(config) == "grpo":
        return "GRPO"
    n = config["es"]["population_size"]
    rank = config["es"].get("noise_rank", 0)
    suffix = f" rank {rank}" if rank else ""
    awd = config.get("awd", {})
    if awd.get("kind", "none") == "none" or not awd.get("lam"):
        return f"ES N={n}{suffix}"
    return f"ES+AWD {awd['kind'].upper()} lam={awd['lam']:g} N={n}{suffix}"


def read_run_config(workdir: str | Path) -> dict[str, Any]:
    """config.json of a run directory; a clear error when the folder is not a run."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise AnalysisError(
            f"{workdir} is not a run directory (no config.json); pass the --config.workdir "
            "of an experiments.run job."
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# Examples of each task.
# ---------------------------------------------------------------------------------------


def analysis_task(
    name: str, run_config: Mapping[str, Any], *, jsonl_options: Mapping[str, str] | None = None
) -> tasks.Task:
    """The task `name` stands for in this analysis: the run's target (its `task` section, so
    a user task keeps its path, checker and prompts) when `name` is the target's name; else
    a built-in, "jsonl:PATH" (with `jsonl_options`) or "package.module:factory"."""
    run_task = run_config.get("task", {})
    if name == run_task.get("name"):
        spec = tasks.TaskSpec.of(run_task)
    else:
        spec = tasks.TaskSpec.of(name)
        if spec.name == tasks.JSONL and jsonl_options:
            spec = dataclasses.replace(spec, **{k: v for k, v in jsonl_options.items() if v})
    try:
        return tasks.resolve_task(spec)
    except tasks.TaskSpecError as err:
        raise AnalysisError(f"task {name!r}: {err}") from None


def eval_split(task) -> str:
    """The split a task is evaluated on: test where it has public labels, else validation."""
    return "test" if "test" in task.splits else "validation"


def _task_data_dir(name: str, run_config: Mapping[str, Any], data_dir: str) -> str:
    """Where task `name`'s examples come from in this run ("" = generated or the hub)."""
    run_task = run_config.get("task", {})
    if name == run_task.get("name"):
        # The run's target task: a run on procedural or hub data stays on it; a file-based
        # one may have moved.
        return (data_dir or run_task.get("data_dir", "")) if run_task.get("data_dir") else ""
    return data_dir or run_task.get("data_dir", "")


def task_examples(
    name: str,
    run_config: Mapping[str, Any],
    *,
    data_dir: str,
    num_examples: int,
    jsonl_options: Mapping[str, str] | None = None,
) -> list[dict]:
    """The evaluation examples of task `name` for this run (the same for every iteration);
    num_examples=tasks.ALL_EXAMPLES: the whole split (not for generated tasks)."""
    task = analysis_task(name, run_config, jsonl_options=jsonl_options)
    run_task = run_config.get("task", {})
    source = _task_data_dir(name, run_config, data_dir)
    try:
        if name == run_task.get("name"):
            # The run's target task: its own held-out split and subset, as the trainer draws it.
            seed = run_config.get("es", run_config.get("grpo", {})).get("seed", 0)
            splits = {k: run_task[k] for k in ("train_split", "eval_split") if k in run_task}
            return scoring.load_examples(
                task, data_dir=source, num_train=run_task.get("num_train", 200),
                eval_size=num_examples, seed=seed, **splits,
            )[1]  # fmt: skip
        if task.generated(source):
            return task.generate(num_examples, seed=tasks.EVAL_SUBSET_SEED, split="test")
        examples = task.load(eval_split(task), source or None)
    except (ConfigError, tasks.TaskDataError) as err:
        raise AnalysisError(f"task {name!r}: {err}") from None
    return tasks.eval_subset(examples, size=num_examples)


def kl_examples(
    name: str,
    run_config: Mapping[str, Any],
    examples: list[dict],
    *,
    data_dir: str,
    num_prompts: int,
    selection: str,
    jsonl_options: Mapping[str, str] | None = None,
) -> list[dict]:
    """The prompts KL(base || tuned) is measured on (`KL_SELECTIONS`); `examples` are the
    task's accuracy examples. Generated tasks (the reference has none) have no whole split to
    draw from: their first `num_prompts` examples, already a random draw, serve both ways."""
    task = analysis_task(name, run_config, jsonl_options=jsonl_options)
    if selection == "first" or task.generated(_task_data_dir(name, run_config, data_dir)):
        return examples[:num_prompts]
    whole = task_examples(
        name, run_config, data_dir=data_dir, num_examples=tasks.ALL_EXAMPLES,
        jsonl_options=jsonl_options,
    )  # fmt: skip
    return tasks.eval_subset(whole, size=num_prompts)


# ---------------------------------------------------------------------------------------
# The whole analysis of one run.
# ---------------------------------------------------------------------------------------


# Settings given per task: a resumed evaluation may add tasks, not change a task's value.
PER_TASK_SETTINGS = ("max_new_tokens", "likelihood")


def _check_resumed_settings(path: Path, current: dict[str, Any]) -> None:
    if not path.exists():
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    stored = json.loads(path.read_text())
    stored.setdefault("kl_selection", LEGACY_KL_SELECTION)
    merged = {key: {**stored.get(key, {}), **current.get(key, {})} for key in PER_TASK_SETTINGS}
    for key, value in current.items():
        old = stored.get(key)
        if key in PER_TASK_SETTINGS:
            old = old or {}
            clash = {t: (old.get(t), v) for t, v in value.items() if old.get(t, v) != v}
            if clash:
                t, (was, now) = next(iter(clash.items()))
                raise AnalysisError(
                    f"{path.parent} was evaluated with {key} {t}={was}, now {now}; pass "
                    f"the stored value to extend it, or --fresh to start the evaluation over."
                )
        elif old is not None and old != value:
            raise AnalysisError(
                f"{path.parent} was evaluated with {key}={old}, now {value}; pass the stored "
                "value to extend it, or --fresh to start the evaluation over."
            )
    merged = {k: v for k, v in merged.items() if v or k == "max_new_tokens"}
    path.write_text(json.dumps({**current, **merged}, indent=2) + "\n")


def clear_analysis(workdir: str | Path) -> None:
    """Delete the analysis files of a run (its training files are untouched)."""
    root = Path(workdir)
    for name in (FORGETTING_FILE, KL_FILE, DRIFT_FILE, SETTINGS_FILE):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / SAMPLES_DIR, ignore_errors=True)


def analyze_run(
    workdir: str | Path,
    s: AnalysisSettings,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Analyze every selected iteration of the run at `workdir`; returns all rows written so
    far (including earlier ones), keyed by file name."""
    check_analysis_settings(s)
    root = Path(workdir)
    run_config = read_run_config(root)
    method = run_method(run_config)
    run = RunDir(root, max_to_keep=None)
    if not run.has_anchor():
        raise AnalysisError(f"{root} has no anchor/ (theta_0); was the run started?")
    # One task object per name (a user task's guard reports a failing checker once).
    task_of = {t: analysis_task(t, run_config, jsonl_options=s.jsonl_options) for t in s.tasks}
    _check_resumed_settings(root / SETTINGS_FILE, s.row_settings())

    # Examples first: a missing data file or a bad row fails before the model is loaded.
    examples = {
        t: task_examples(
            t,
            run_config,
            data_dir=s.data_dir,
            num_examples=s.num_examples,
            jsonl_options=s.jsonl_options,
        )
        for t in s.tasks
    }
    ll_examples = {
        t: task_examples(t, run_config, data_dir=s.data_dir, num_examples=n)
        for t, n in s.likelihood.items()
    }
    kl_prompts = {
        t: kl_examples(
            t,
            run_config,
            examples[t],
            data_dir=s.data_dir,
            num_prompts=s.kl_prompts,
            selection=s.kl_selection,
            jsonl_options=s.jsonl_options,
        )
        for t in (s.tasks if s.kl else ())
    }
    m = run_config["model"]
    model = models.load(
        m["name"],
        dtype=m.get("compute_dtype", "float32"),
        cache=s.model_cache_dir or m.get("cache_dir") or None,
    )
    config, tokenizer = model.config, model.tokenizer
    theta0 = jax.device_put(run.restore_anchor_numpy(model.params))
    # a run anchored to another model (awd.anchor) starts from its start/ parameters
    start = jax.device_put(run.restore_start_numpy(model.params)) if run.has_start() else None
    del model
    thetas = Thetas(run, theta0, method=method, start=start)
    iterations = select_iterations(
        thetas.available(), thetas.steps, stride=s.stride, explicit=s.iterations
    )

    logs = {name: JsonlLog(root / name) for name in (FORGETTING_FILE, KL_FILE, DRIFT_FILE)}
    done_tasks = {(r["iteration"], r["task"]) for r in logs[FORGETTING_FILE].rows()}
    done_kl = {(r["iteration"], r["task"]) for r in logs[KL_FILE].rows()}
    done_drift = {r["iteration"] for r in logs[DRIFT_FILE].rows()}

    def todo(t: int) -> list[tuple[str, str]]:
        items = [("task", name) for name in s.tasks if (t, name) not in done_tasks]
        items += [("likelihood", name) for name in s.likelihood
                  if (t, row_key(name)) not in done_tasks]  # fmt: skip
        if s.kl:
            items += [("kl", name) for name in s.tasks if (t, name) not in done_kl]
        if s.drift and t not in done_drift:
            items.append(("drift", ""))
        return items

    work = {t: todo(t) for t in iterations}
    total = sum(len(v) for v in work.values())
    log(
        f"{root.name}: {run_label(run_config)}, iterations {format_ranges(iterations)}; "
        f"{total} items to evaluate ({len(iterations) * len(todo(-1))} in all)"
    )
    samples: dict[str, KLSamples] = {}
    bar = tqdm(total=total, disable=not progress, desc=f"evaluate {root.name}", unit="item")
    for t in iterations:
        if not work[t]:
            continue
        params = thetas.get(t)
        for kind, name in work[t]:
            bar.set_postfix(iteration=t, item=f"{kind} {name}".strip())
            if kind == "drift":
                row = weight_drift(params, theta0)
                logs[DRIFT_FILE].append({"iteration": t, **row})
            elif kind == "task":
                row = scoring.heldout_accuracy(
                    config, params, tokenizer, task_of[name], examples[name],
                    max_new_tokens=s.tokens_for(name), batch_size=s.batch_size,
                )  # fmt: skip
                logs[FORGETTING_FILE].append({"iteration": t, "task": name, **row})
            elif kind == "likelihood":
                row = choice_accuracy(
                    config, params, tokenizer, tasks.get_task(name), ll_examples[name],
                    batch_size=s.batch_size,
                )  # fmt: skip
                logs[FORGETTING_FILE].append({"iteration": t, "task": row_key(name), **row})
            else:
                if name not in samples:
                    samples[name] = _kl_samples(
                        root, s, config, theta0, tokenizer, name, task_of[name], kl_prompts[name]
                    )
                smp = samples[name]
                logp = [log_probs(config, params, smp, b) for b in range(len(smp.tokens))]
                logs[KL_FILE].append({"iteration": t, "task": name, **kl_divergence(smp, logp)})
            bar.update(1)
    bar.close()
    run.close()
    return {name: log_.rows() for name, log_ in logs.items()}


def samples_file(name: str) -> str:
    """The file name of a task's cached KL samples: `<name>.npz`, or for a name that is not
    a plain file name (jsonl:PATH, module:factory) its safe characters and a hash."""
    if re.fullmatch(r"[\w.-]+", name):
        return f"{name}.npz"
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_")[-60:]
    return f"{safe}-{digest}.npz"


def _kl_samples(root, s, config, theta0, tokenizer, name, task, prompts) -> KLSamples:
    """The task's cached base samples on `prompts`, sampled (and cached) on first use."""
    path = root / SAMPLES_DIR / samples_file(name)
    meta = {
        "task": name,
        "num_prompts": len(prompts),
        "max_new_tokens": s.kl_max_new_tokens,
        "seed": s.kl_seed,
        "selection": s.kl_selection,
    }
    if path.exists():
        smp, stored = KLSamples.load(path)
        stored.setdefault("selection", LEGACY_KL_SELECTION)
        if {k: stored.get(k) for k in meta} == meta:
            return smp
    smp = sample_base(
        config, theta0, tokenizer, task, prompts,
        max_new_tokens=s.kl_max_new_tokens, seed=s.kl_seed, batch_size=s.batch_size,
    )  # fmt: skip
    smp.save(path, {**meta, "num_batches": len(smp.tokens)})
    return smp
