"""The forgetting analysis of a run directory (paper Sec. 5): task accuracy, KL(base || tuned)
and weight drift of theta_t over training, for ES, ES + AWD and GRPO runs alike.

    import esawd.eval as ev
    ev.evaluate_run("runs/x", ev.AnalysisSettings(tasks=("proofwriter", "piqa"), data_dir=DATA))

writes, inside the run directory (`python -m experiments.evaluate` is the command line):

    forgetting.jsonl     {iteration, task, accuracy, format_rate, reward, tokens, num_examples}
    kl.jsonl             {iteration, task, kl, kl_prompt_avg, num_tokens, num_prompts}
    weight_drift.jsonl   {iteration, frobenius, relative, per_module, per_layer, mean_abs,
                          max_abs, num_params}
    kl_samples/<task>.npz   the base model's sampled continuations and their log-probs
    evaluate.json        the settings the rows were made with

theta_t comes from the checkpoint at t when there is one; otherwise, for ES, it is replayed
from the nearest earlier checkpoint (or theta_0) with the seeds and coefficients in
`es_log.jsonl`, which gives the parameters bitwise equal to what training had. Evaluation is
resumable: rows already written are skipped, each (iteration, task) is appended as soon as it
is done, so an interrupted evaluation loses at most the item it was on.

Protocol (as the reference's `evaluation/evaluate_forgetting.py`): greedy decoding with each
task's prompts, at most `num_examples` examples per task drawn with random.Random(2357)
(`tasks.eval_subset`), MMLU-Pro 5-shot. KL: `kl_prompts` prompts of each task, one
continuation each sampled from theta_0 at temperature 1 (at most `kl_max_new_tokens` tokens),
scored under theta_0 and theta_t; `kl` is the token-weighted k1 estimate
sum(log p0 - log pt) / tokens, `kl_prompt_avg` the mean over prompts of each prompt's
per-token average. Drift: ||theta_t - theta_0|| accumulated in float64, globally, per module
type and per layer.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from esawd import es
from esawd.rundir import JsonlLog, RunDir
from esawd.types import Params

FORGETTING_FILE = "forgetting.jsonl"
KL_FILE = "kl.jsonl"
DRIFT_FILE = "weight_drift.jsonl"
SETTINGS_FILE = "evaluate.json"
SAMPLES_DIR = "kl_samples"

# Module types of the drift breakdown, from the parameter paths of `esawd.models`.
MODULES = ("embedding", "attn_q", "attn_k", "attn_v", "attn_o", "mlp", "norms", "head")


class EvaluationError(ValueError):
    """A setting or run directory the evaluation refuses, with the fix in the message."""


# ---------------------------------------------------------------------------------------
# Settings and the run being evaluated.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    tasks: tuple[str, ...]  # e.g. ("proofwriter", "piqa", "arc_challenge")
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
    drift: bool = True
    model_cache_dir: str = ""  # "" = the run's model.cache_dir

    def tokens_for(self, task: str) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        if task not in self.max_new_tokens:
            raise EvaluationError(
                f"max_new_tokens has no value for {task!r}; give one per task "
                f"({', '.join(f'{k}={v}' for k, v in self.max_new_tokens.items())}) or one number."
            )
        return int(self.max_new_tokens[task])

    def row_settings(self) -> dict[str, Any]:
        """The settings that change what a row means (checked when an evaluation resumes)."""
        return {
            "num_examples": self.num_examples,
            "max_new_tokens": {t: self.tokens_for(t) for t in self.tasks},
            "kl_prompts": self.kl_prompts,
            "kl_max_new_tokens": self.kl_max_new_tokens,
            "kl_seed": self.kl_seed,
        }


def check_analysis_settings(s: AnalysisSettings) -> None:
    """Refuse bad settings with the key, the value and what is valid."""
    from esawd import tasks

    unknown = [t for t in s.tasks if t not in tasks.TASK_NAMES]
    if unknown or not s.tasks:
        raise EvaluationError(
            f"tasks={','.join(s.tasks)!r} is invalid: use a comma-separated subset of "
            f"{','.join(tasks.TASK_NAMES)}."
        )
    for key in ("num_examples", "batch_size", "kl_prompts", "kl_max_new_tokens"):
        if getattr(s, key) < 1:
            raise EvaluationError(f"{key}={getattr(s, key)} is invalid: it must be >= 1.")
    if s.stride < 0:
        raise EvaluationError(f"stride={s.stride} is invalid: use 0 (every checkpoint) or >= 1.")
    for t in s.tasks:
        if s.tokens_for(t) < 1:
            raise EvaluationError(f"max_new_tokens for {t} is {s.tokens_for(t)}; it must be >= 1.")


def run_method(config: Mapping[str, Any]) -> str:
    """'es' or 'grpo': what trained the run (configs written before `method` existed: es)."""
    return str(config.get("method", "es"))


def run_label(config: Mapping[str, Any]) -> str:
    """A short legend label: 'ES N=4', 'ES+AWD L2 lam=100 N=4', 'GRPO'."""
    if run_method(config) == "grpo":
        return "GRPO"
    n = config["es"]["population_size"]
    awd = config.get("awd", {})
    if awd.get("kind", "none") == "none" or not awd.get("lam"):
        return f"ES N={n}"
    return f"ES+AWD {awd['kind'].upper()} lam={awd['lam']:g} N={n}"


def read_run_config(workdir: str | Path) -> dict[str, Any]:
    """config.json of a run directory; a clear error when the folder is not a run."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise EvaluationError(
            f"{workdir} is not a run directory (no config.json); pass the --config.workdir "
            "of an experiments.run job."
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# theta_t of a run.
# ---------------------------------------------------------------------------------------


class Thetas:
    """theta_t of one run, for increasing t: checkpoints where saved, ES replay in between.

    `theta0` is the run's anchor as device arrays; `get(t)` returns device arrays. Asking for
    increasing iterations replays each ES step once.
    """

    def __init__(self, run: RunDir, theta0: Params, *, method: str):
        self.run = run
        self.theta0 = theta0
        self.method = method
        self.steps = sorted(run.all_steps())
        self.es_rows = run.es_log.rows() if method == "es" else []
        self._anchor: es.HostAnchor | None = None
        self._current: tuple[int, Params] = (0, theta0)

    def available(self) -> list[int]:
        """Every iteration whose parameters can be had: 0, checkpoints, logged ES steps."""
        logged = [r["iteration"] for r in self.es_rows]
        # Replay needs every row from 1 on; a gap ends what can be replayed.
        replayable = 0
        for t in sorted(logged):
            if t != replayable + 1:
                break
            replayable = t
        return sorted({0, *self.steps, *range(1, replayable + 1)})

    def get(self, t: int) -> Params:
        from esawd import trainer

        if t == 0:
            return self.theta0
        if t in self.steps:
            params, _ = self.run.restore(t, self.theta0)
            self._current = (t, params)
            return params
        if self.method != "es":
            raise EvaluationError(
                f"{self.run.root} has no checkpoint at iteration {t} ({self.method} runs are "
                f"evaluated at checkpoints only: {self.steps})."
            )
        start = self._current if self._current[0] <= t else (0, self.theta0)
        earlier = [c for c in self.steps if start[0] < c < t]
        if earlier:
            start = (earlier[-1], self.run.restore(earlier[-1], self.theta0)[0])
        if self._anchor is None:
            self._anchor = es.host_anchor(jax.tree.map(np.asarray, self.theta0))
        params = trainer.replay(self.theta0, self.es_rows, upto=t, anchor=self._anchor, start=start)
        self._current = (t, params)
        return params


def select_iterations(
    available: Sequence[int], checkpoints: Sequence[int], *, stride: int, explicit: Sequence[int]
) -> list[int]:
    """The iterations to evaluate: the explicit ones if given; else 0, the last available and
    either every multiple of `stride` or (stride 0) every checkpoint."""
    available = sorted(available)
    if explicit:
        missing = sorted(set(explicit) - set(available))
        if missing:
            raise EvaluationError(
                f"iterations {missing} cannot be evaluated: this run has checkpoints or "
                f"ES-log rows for {_ranges(available)}."
            )
        return sorted(set(explicit))
    picked = checkpoints if stride == 0 else [t for t in available if t % stride == 0]
    return sorted({0, available[-1], *picked})


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(xs)
    if not xs:
        return "nothing"
    if xs == list(range(xs[0], xs[-1] + 1)) and len(xs) > 2:
        return f"{xs[0]}..{xs[-1]}"
    return ", ".join(map(str, xs))


# ---------------------------------------------------------------------------------------
# Weight drift.
# ---------------------------------------------------------------------------------------


def module_of(path: tuple[str, ...]) -> str:
    """The module type of a parameter path of `esawd.models` (one of MODULES)."""
    names = [str(p) for p in path]
    if names[0] == "embed":
        return "embedding"
    if names[0] == "lm_head":
        return "head"
    if any("norm" in n for n in names):
        return "norms"
    for proj, module in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
        if proj in names:
            return module
    if "o_proj" in names:
        return "attn_o"
    if "mlp" in names:
        return "mlp"
    return names[0]


def _path_names(path) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _layer_slices(x, stacked: bool) -> Iterable[tuple[int | None, np.ndarray]]:
    """A leaf as float64 host arrays, one layer at a time for stacked layer weights."""
    if stacked:
        for i in range(x.shape[0]):
            yield i, np.asarray(es.host_value(x[i]) if isinstance(x, jax.Array) else x[i])
    else:
        yield None, np.asarray(es.host_value(x) if isinstance(x, jax.Array) else x)


def weight_drift(params: Params, theta0: Params) -> dict[str, Any]:
    """||theta - theta_0|| in float64: global, relative to ||theta_0||, per module and layer.

    Leaves under params["layers"] are stacked [L, ...]; they are read one layer at a time, so
    the float64 copies stay the size of one layer.
    """
    squares: dict[str, float] = {}
    per_layer: dict[int, float] = {}
    total = ref = abs_sum = 0.0
    max_abs = 0.0
    count = 0
    flat0 = dict(jax.tree_util.tree_leaves_with_path(theta0))
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        names = _path_names(path)
        x0 = flat0.get(path)
        if x0 is None or np.shape(x0) != np.shape(x):
            raise EvaluationError(
                f"parameter {jax.tree_util.keystr(path)} {np.shape(x)} has no match in theta_0 "
                f"({None if x0 is None else np.shape(x0)}); are they from the same model?"
            )
        stacked = names[0] == "layers"
        module = module_of(names)
        for (i, a), (_, b) in zip(
            _layer_slices(x, stacked), _layer_slices(x0, stacked), strict=True
        ):
            b64 = b.astype(np.float64)
            d = a.astype(np.float64) - b64
            sq = float(np.sum(d * d))
            total += sq
            ref += float(np.sum(b64 * b64))
            squares[module] = squares.get(module, 0.0) + sq
            if i is not None:
                per_layer[i] = per_layer.get(i, 0.0) + sq
            abs_d = np.abs(d)
            abs_sum += float(abs_d.sum())
            max_abs = max(max_abs, float(abs_d.max(initial=0.0)))
            count += d.size
    frob = float(np.sqrt(total))
    return {
        "frobenius": frob,
        "relative": frob / float(np.sqrt(ref)) if ref > 0 else 0.0,
        "per_module": {m: float(np.sqrt(v)) for m, v in squares.items()},
        "per_layer": [float(np.sqrt(per_layer[i])) for i in sorted(per_layer)],
        "mean_abs": abs_sum / max(count, 1),
        "max_abs": max_abs,
        "num_params": count,
    }


# ---------------------------------------------------------------------------------------
# KL(base || tuned) on the base model's own samples.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class KLSamples:
    """One task's prompts, the base model's sampled continuations and their base log-probs,
    as lists of batches (prompt widths differ between batches)."""

    ids: list[np.ndarray]
    mask: list[np.ndarray]
    tokens: list[np.ndarray]
    lengths: list[np.ndarray]
    base_logp: list[np.ndarray]  # [B, C] float32, 0 past each row's length

    def cont_mask(self, b: int) -> np.ndarray:
        return np.arange(self.tokens[b].shape[1])[None, :] < self.lengths[b][:, None]

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        arrays = {"meta": np.array(json.dumps(meta))}
        for name in ("ids", "mask", "tokens", "lengths", "base_logp"):
            for b, x in enumerate(getattr(self, name)):
                arrays[f"{name}_{b}"] = x
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> tuple[KLSamples, dict[str, Any]]:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            n = meta["num_batches"]
            fields = {
                name: [f[f"{name}_{b}"] for b in range(n)]
                for name in ("ids", "mask", "tokens", "lengths", "base_logp")
            }
        return cls(**fields), meta


def log_probs(config, params, samples: KLSamples, b: int) -> np.ndarray:
    """Log-probabilities [B, C] of batch b's continuations under `params` (0 on padding)."""
    from esawd import sampling

    lp = sampling.sequence_log_probs(
        config, params, samples.ids[b], samples.mask[b], samples.tokens[b], samples.cont_mask(b)
    )
    return np.asarray(es.host_value(lp))


def sample_base(
    config, theta0, tokenizer, task, examples, *, max_new_tokens: int, seed: int, batch_size: int
) -> KLSamples:
    """One continuation per prompt from theta_0 at temperature 1, with its base log-probs."""
    from esawd import sampling, trainer

    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(task.name.encode()))
    out = KLSamples([], [], [], [], [])
    for b, i in enumerate(range(0, len(examples), batch_size)):
        batch = trainer.encode(task, examples[i : i + batch_size], tokenizer)
        tokens, lengths = sampling.generate(
            config, theta0, batch.ids, batch.mask, max_new_tokens=max_new_tokens,
            temperature=1.0, key=jax.random.fold_in(key, b),
        )  # fmt: skip
        out.ids.append(np.asarray(batch.ids, np.int32))
        out.mask.append(np.asarray(batch.mask, bool))
        out.tokens.append(np.asarray(es.host_value(tokens), np.int32))
        out.lengths.append(np.asarray(es.host_value(lengths), np.int32))
        out.base_logp.append(log_probs(config, theta0, out, b))
    return out


def kl_divergence(samples: KLSamples, logp: Sequence[np.ndarray]) -> dict[str, Any]:
    """k1 estimates of KL(base || tuned) from base and tuned log-probs of the base's samples."""
    diff_sum = 0.0
    tokens = 0
    per_prompt = []
    for b, lp in enumerate(logp):
        mask = samples.cont_mask(b)
        d = np.where(mask, samples.base_logp[b].astype(np.float64) - lp.astype(np.float64), 0.0)
        row_sum = d.sum(axis=1)
        n = mask.sum(axis=1)
        diff_sum += float(row_sum.sum())
        tokens += int(n.sum())
        per_prompt += [float(s / k) for s, k in zip(row_sum, n, strict=True) if k > 0]
    return {
        "kl": diff_sum / tokens if tokens else 0.0,
        "kl_prompt_avg": float(np.mean(per_prompt)) if per_prompt else 0.0,
        "num_tokens": tokens,
        "num_prompts": sum(len(x) for x in samples.lengths),
    }


# ---------------------------------------------------------------------------------------
# Examples of each task.
# ---------------------------------------------------------------------------------------


def eval_split(task) -> str:
    """The split a task is evaluated on: test where it has public labels, else validation."""
    return "test" if "test" in task.splits else "validation"


def task_examples(
    name: str, run_config: Mapping[str, Any], *, data_dir: str, num_examples: int
) -> list[dict]:
    """The evaluation examples of task `name` for this run (the same for every iteration)."""
    from esawd import tasks, trainer

    task = tasks.get_task(name)
    run_task = run_config.get("task", {})
    if name == run_task.get("name"):
        # The run's target task: its own held-out split and subset, as the trainer draws it
        # (a run on procedural or hub data stays on it; a file-based one may have moved).
        fields = {f.name for f in dataclasses.fields(trainer.TaskSettings)}
        moved = (data_dir or run_task.get("data_dir", "")) if run_task.get("data_dir") else ""
        settings = trainer.TaskSettings(
            **{**{k: v for k, v in run_task.items() if k in fields}, "data_dir": moved}
        )
        seed = run_config.get("es", run_config.get("grpo", {})).get("seed", 0)
        return trainer.load_examples(settings, eval_size=num_examples, seed=seed)[1]
    data_dir = data_dir or run_task.get("data_dir", "")
    if not data_dir and hasattr(task, "generate"):
        return task.generate(num_examples, seed=tasks.EVAL_SUBSET_SEED)
    examples = task.load(eval_split(task), data_dir or None)
    return tasks.eval_subset(examples, size=num_examples)


# ---------------------------------------------------------------------------------------
# The whole evaluation of one run.
# ---------------------------------------------------------------------------------------


def _check_resumed_settings(path: Path, current: dict[str, Any]) -> None:
    if not path.exists():
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    stored = json.loads(path.read_text())
    merged_tokens = {**stored.get("max_new_tokens", {}), **current["max_new_tokens"]}
    for key, value in current.items():
        old = stored.get(key)
        if key == "max_new_tokens":
            clash = {t: (old.get(t), v) for t, v in value.items() if old.get(t, v) != v}
            if clash:
                t, (was, now) = next(iter(clash.items()))
                raise EvaluationError(
                    f"{path.parent} was evaluated with max_new_tokens {t}={was}, now {now}; pass "
                    f"the stored value to extend it, or --fresh to start the evaluation over."
                )
        elif old is not None and old != value:
            raise EvaluationError(
                f"{path.parent} was evaluated with {key}={old}, now {value}; pass the stored "
                "value to extend it, or --fresh to start the evaluation over."
            )
    path.write_text(json.dumps({**current, "max_new_tokens": merged_tokens}, indent=2) + "\n")


def clear_evaluation(workdir: str | Path) -> None:
    """Delete the evaluation files of a run (its training files are untouched)."""
    import shutil

    root = Path(workdir)
    for name in (FORGETTING_FILE, KL_FILE, DRIFT_FILE, SETTINGS_FILE):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / SAMPLES_DIR, ignore_errors=True)


def evaluate_run(
    workdir: str | Path,
    s: AnalysisSettings,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Evaluate every selected iteration of the run at `workdir`; returns all rows written so
    far (including earlier ones), keyed by file name."""
    from tqdm.auto import tqdm

    from esawd import models, tasks, trainer

    check_analysis_settings(s)
    root = Path(workdir)
    run_config = read_run_config(root)
    method = run_method(run_config)
    run = RunDir(root, max_to_keep=None)
    if not run.has_anchor():
        raise EvaluationError(f"{root} has no anchor/ (theta_0); was the run started?")
    _check_resumed_settings(root / SETTINGS_FILE, s.row_settings())

    # Examples first: a missing data file fails before the model is loaded.
    examples = {
        t: task_examples(t, run_config, data_dir=s.data_dir, num_examples=s.num_examples)
        for t in s.tasks
    }
    m = run_config["model"]
    model = models.load(
        m["name"],
        dtype=m.get("compute_dtype", "float32"),
        cache=s.model_cache_dir or m.get("cache_dir") or None,
    )
    config, tokenizer = model.config, model.tokenizer
    theta0 = jax.device_put(run.restore_anchor_numpy(model.params))
    del model
    thetas = Thetas(run, theta0, method=method)
    iterations = select_iterations(
        thetas.available(), thetas.steps, stride=s.stride, explicit=s.iterations
    )

    logs = {name: JsonlLog(root / name) for name in (FORGETTING_FILE, KL_FILE, DRIFT_FILE)}
    done_tasks = {(r["iteration"], r["task"]) for r in logs[FORGETTING_FILE].rows()}
    done_kl = {(r["iteration"], r["task"]) for r in logs[KL_FILE].rows()}
    done_drift = {r["iteration"] for r in logs[DRIFT_FILE].rows()}

    def todo(t: int) -> list[tuple[str, str]]:
        items = [("task", name) for name in s.tasks if (t, name) not in done_tasks]
        if s.kl:
            items += [("kl", name) for name in s.tasks if (t, name) not in done_kl]
        if s.drift and t not in done_drift:
            items.append(("drift", ""))
        return items

    work = {t: todo(t) for t in iterations}
    total = sum(len(v) for v in work.values())
    log(
        f"{root.name}: {run_label(run_config)}, iterations {_ranges(iterations)}; "
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
                task = tasks.get_task(name)
                row = trainer.evaluate_params(
                    config, params, tokenizer, task, examples[name],
                    max_new_tokens=s.tokens_for(name), batch_size=s.batch_size,
                )  # fmt: skip
                logs[FORGETTING_FILE].append({"iteration": t, "task": name, **row})
            else:
                if name not in samples:
                    samples[name] = _kl_samples(root, s, config, theta0, tokenizer, name, examples)
                smp = samples[name]
                logp = [log_probs(config, params, smp, b) for b in range(len(smp.tokens))]
                logs[KL_FILE].append({"iteration": t, "task": name, **kl_divergence(smp, logp)})
            bar.update(1)
    bar.close()
    run.close()
    return {name: log_.rows() for name, log_ in logs.items()}


def _kl_samples(root, s, config, theta0, tokenizer, name, examples) -> KLSamples:
    """The task's cached base samples, sampled (and cached) on first use."""
    from esawd import tasks

    path = root / SAMPLES_DIR / f"{name}.npz"
    meta = {
        "task": name,
        "num_prompts": min(s.kl_prompts, len(examples[name])),
        "max_new_tokens": s.kl_max_new_tokens,
        "seed": s.kl_seed,
    }
    if path.exists():
        smp, stored = KLSamples.load(path)
        if {k: stored.get(k) for k in meta} == meta:
            return smp
    smp = sample_base(
        config, theta0, tokenizer, tasks.get_task(name), examples[name][: s.kl_prompts],
        max_new_tokens=s.kl_max_new_tokens, seed=s.kl_seed, batch_size=s.batch_size,
    )  # fmt: skip
    smp.save(path, {**meta, "num_batches": len(smp.tokens)})
    return smp
