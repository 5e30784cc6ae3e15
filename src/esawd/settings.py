"""The one settings schema: every key of a run, its default, and whether a resumed run may
change it.

The frozen dataclasses below are the only place a key and its default are written. Configs
(`configs/*.py`) start from `config_dict(method)`, the same tree as an ml-collections
ConfigDict; `from_config` turns a (locked, overridden) config back into `RunSettings`;
`to_dict` is what `config.json` in the run directory stores. A method's run holds only its
own sections (`METHOD_SECTIONS`), so no key is silently ignored.

Library functions never take these objects: the training loop unpacks them into plain
arguments.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A field marked resumable may differ between the stored config.json and a resumed run.
RESUMABLE = {"resumable": True}


def _field(default: Any, *, resumable: bool = False) -> Any:
    meta = RESUMABLE if resumable else {}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A setting the run refuses, raised before any model is loaded."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    name: str = "smollm2-135m-instruct"  # preset, local HF dir, .gguf path or hub id
    compute_dtype: str = "float32"  # masters stay float32
    cache_dir: str = _field("", resumable=True)  # "" = $ESAWD_CACHE_DIR or ~/.cache/esawd


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    name: str = "countdown"
    # folder with <task>/ (e.g. ../shared/data); "" = generated (rules, arithmetic, Countdown)
    # or the hub; rules and arithmetic are always generated
    data_dir: str = _field("", resumable=True)
    num_train: int = 200
    max_new_tokens: int = 1024
    train_split: str = "train"
    eval_split: str = "test"
    # Your own task (docs/tasks.md, "Your own task"), name="jsonl": a .jsonl/.parquet file (a
    # quarter of its rows held out by hash) or a folder of <split>.jsonl/.parquet files
    path: str = _field("", resumable=True)
    # how a completion is scored: exact, numeric[:tol], choice, regex:<pattern> or an import
    # path module:function returning a reward in [0, 1] ("" = exact)
    checker: str = ""
    system_prompt: str = ""  # a system message before each row's prompt ("" = none)
    template: str = ""  # str.format over a row's fields: the user message of rows without one
    prefill: str = ""  # the assistant's reply starts with this ("" = a fresh assistant turn)


@dataclasses.dataclass(frozen=True)
class ESSettings:
    population_size: int = 30  # N: members per iteration (2K with antithetic sampling)
    sigma: float = 1e-3
    alpha: float = 5e-4
    antithetic: bool = False
    num_iterations: int = _field(500, resumable=True)
    seed: int = 0
    # "reference": the reference's noise, vLLM's fused layout with shared leading values;
    # "shape": noise shared between leaves of equal shape (a coarser approximation of it)
    noise_sharing: str = "none"
    # "float32": float32 masters, one rounding per step. "reference_float16": the reference's
    # float16 in-place dynamics (float16 masters, op-by-op rounding, the residue of engine 0's
    # perturb/restore round trips; needs model.compute_dtype="float16"), a reproduction switch
    precision: str = "float32"
    reference_engines: int = 8  # the reference's --num_engines (run.sh: 8), for the residue
    # 0: full-rank noise (the paper's); r >= 1: each weight matrix's noise is A B^T / sqrt(r)
    # (EGGROLL), and the members of a device decode as one batch over the shared weights
    noise_rank: int = 0
    # members generated together on one device (0: automatic; 1 at full rank, as many as fit
    # in the device's memory at low rank)
    members_per_batch: int = _field(0, resumable=True)
    # devices the run uses (0: every device of every process): num_devices / model_axis
    # members at a time along the `pop` mesh axis
    num_devices: int = _field(0, resumable=True)
    # devices per member (the `model` mesh axis): its weights, KV cache and activations split
    # tensor-parallel over them (esawd.mesh), for models one device cannot hold. A resumed run
    # may change it; its generations then round their split sums differently
    model_axis: int = _field(1, resumable=True)


@dataclasses.dataclass(frozen=True)
class AWDSettings:
    kind: str = "l2"  # "none", "l1" or "l2"
    lam: float = 10.0  # paper: l2 10, l1 0.01
    # theta_0, the model AWD pulls towards and drift and KL are measured against: "" = the
    # model the run starts from; else a model source (model.name syntax) or a run directory
    # (its theta_0), e.g. the deployed model while a later stage starts from an earlier export
    anchor: str = ""


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    num_steps: int = _field(500, resumable=True)
    prompts_per_step: int = 200  # drawn from the task.num_train training prompts each step
    group_size: int = 30  # n completions per prompt
    temperature: float = 1.0
    learning_rate: float = 1e-6
    kl_coef: float = 1e-3  # beta: k3 KL to theta_0
    clip_eps: float = 0.2
    mini_batch_size: int = 32  # prompts (groups) per optimizer update, as verl counts them
    # sequences per gradient computation (accumulated): changes only the summation order
    micro_batch_size: int = _field(8, resumable=True)
    generate_batch_size: int = 256  # sequences per sampler call
    weight_decay: float = 0.01  # AdamW's (towards 0, not theta_0)
    max_grad_norm: float = 1.0  # global-norm clipping before AdamW (0: off)
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    adv_eps: float = 1e-6  # added to the group std
    seed: int = 0
    # devices the model, its optimizer state and its sampling split over, tensor-parallel
    # (esawd.mesh); 1: one device
    model_axis: int = _field(1, resumable=True)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    interval: int = 50  # held-out accuracy every this many iterations (0: only at the end)
    # held-out examples: a seeded subset of this many (tasks.eval_subset); 0: no held-out
    # evaluation; -1 (tasks.ALL_EXAMPLES): the whole test split, as the reference's es.py
    num_examples: int = 200
    batch_size: int = 64
    # KL(base || tuned) at each evaluation on prompts of this task, one the run is not trained
    # on ("" = none): the forgetting side of the run, on screen while it trains
    kl_task: str = ""
    kl_prompts: int = 32
    kl_max_new_tokens: int = 64


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    interval: int = 50
    max_to_keep: int | None = 3
    # Orbax async saving: the next iteration starts once the arrays are off the devices and the
    # files are written in the background (a 7B model's 28 GB save no longer stalls the run);
    # a checkpoint still being written is never loaded
    async_save: bool = False


@dataclasses.dataclass(frozen=True)
class LogSettings:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "esawd"
    progress: bool = True
    # at the end: summary.json, summary.png and a table of base vs tuned (esawd.report)
    summary: bool = True


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """Several processes (hosts): `enabled` calls jax.distributed.initialize with these values;
    empty/negative values are auto-detected (SLURM, Open MPI, ...)."""

    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    # CPU only: split this process's CPU into this many JAX devices (0: JAX's default, one).
    # Members then generate concurrently: 1.18x on 2 cores (docs/benchmarks.md); results are
    # bitwise the same. No effect on the GPU backend.
    cpu_devices: int = 0


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """One training run. Sections of the other method are None (`METHOD_SECTIONS`)."""

    method: str = "es"  # "es" or "grpo"
    workdir: str = ""  # required: the run directory
    model: ModelSettings = _field(ModelSettings())
    task: TaskSettings = _field(TaskSettings())
    es: ESSettings | None = _field(ESSettings())
    awd: AWDSettings | None = _field(AWDSettings())
    grpo: GRPOSettings | None = None
    eval: EvalSettings = _field(EvalSettings(), resumable=True)
    checkpoint: CheckpointSettings = _field(CheckpointSettings(), resumable=True)
    log: LogSettings = _field(LogSettings(), resumable=True)
    export: bool = _field(True, resumable=True)  # write the final model to <workdir>/final
    # build the mesh, print the memory plan, load the model and compile one member's
    # generation (GRPO: one sampling batch), print the compile time; write nothing, exit 0
    dry_run: bool = _field(False, resumable=True)
    distributed: DistributedSettings | None = _field(DistributedSettings(), resumable=True)


SECTIONS = {
    "es": ESSettings,
    "awd": AWDSettings,
    "grpo": GRPOSettings,
    "distributed": DistributedSettings,
}
# The optional sections each method has; GRPO runs on one process, so it has no `distributed`.
METHOD_SECTIONS = {"es": ("es", "awd", "distributed"), "grpo": ("grpo",)}
METHODS = tuple(METHOD_SECTIONS)


def defaults(method: str = "es") -> RunSettings:
    """The default settings of `method`, with exactly that method's sections."""
    _check_method(method)
    wanted = METHOD_SECTIONS[method]
    return RunSettings(
        method=method, **{k: (cls() if k in wanted else None) for k, cls in SECTIONS.items()}
    )


def to_dict(s: RunSettings) -> dict[str, Any]:
    """The settings as a nested dict without the absent sections: what config.json holds."""
    return {k: v for k, v in dataclasses.asdict(s).items() if v is not None}


def config_dict(method: str = "es"):
    """An ml-collections ConfigDict of `method`'s defaults: what every config file starts from."""
    from ml_collections import ConfigDict

    return ConfigDict(to_dict(defaults(method)))


def from_config(c: Any) -> RunSettings:
    """Typed settings from a config (a ConfigDict or a nested mapping) of the schema's tree."""
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    method = d.get("method", "es")
    _check_method(method)
    if not d.get("workdir"):
        raise ConfigError("workdir is empty: pass --config.workdir=DIR (the run dir).")
    fields = {f.name: f for f in dataclasses.fields(RunSettings)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; the schema is esawd.settings.")
    kwargs: dict[str, Any] = {k: None for k in SECTIONS}
    for key, value in d.items():
        cls = _section_class(fields[key])
        kwargs[key] = _build(cls, value, key) if cls is not None else value
    return RunSettings(**kwargs)


def _section_class(f: dataclasses.Field) -> type | None:
    if f.name in SECTIONS:
        return SECTIONS[f.name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return type(default) if dataclasses.is_dataclass(default) else None


def _build(cls: type, value: Mapping[str, Any] | None, key: str) -> Any:
    if value is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"unknown keys {[f'{key}.{u}' for u in unknown]}; valid: {sorted(names)}")
    return cls(**value)


def _check_method(method: str) -> None:
    if method not in METHOD_SECTIONS:
        raise ConfigError(f"method={method!r} is unknown; use one of {METHODS}.")


def resumable_keys() -> tuple[str, ...]:
    """Dotted keys (a trailing "." marks a whole section) that a resumed run may change."""
    out = []
    for f in dataclasses.fields(RunSettings):
        cls = _section_class(f)
        if f.metadata.get("resumable"):
            out.append(f"{f.name}." if cls is not None else f.name)
        elif cls is not None:
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(cls) if g.metadata]
    return tuple(out)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(stored: Mapping[str, Any], current: Mapping[str, Any], *, workdir: str) -> None:
    """Refuse to resume a run directory whose stored config differs in a key that matters.

    A key the stored config lacks (added to the schema after the run was made) matches its
    default, the value the run was made with."""
    resumable = resumable_keys()
    a, b = flatten(stored), flatten(current)
    known = flatten(to_dict(defaults(current.get("method", "es"))))
    for key in sorted(set(a) | set(b)):
        if key not in a and key in known:
            a[key] = known[key]
        if a.get(key) == b.get(key) or key in resumable or key.startswith(_prefixes(resumable)):
            continue
        raise ConfigError(
            f"{workdir} holds a run with {key}={a.get(key)!r}, but this config has "
            f"{key}={b.get(key)!r}; use a new workdir, or the stored value to resume."
        )


def _prefixes(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in keys if k.endswith("."))


# ---------------------------------------------------------------------------------------
# Checks: bad settings are refused with the key, the value and the valid range.
# ---------------------------------------------------------------------------------------


def _bad(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is invalid: {valid}.")


def _at_least_one(**keys: int) -> None:
    for key, value in keys.items():
        if value < 1:
            raise _bad(key.replace("__", "."), value, "must be >= 1")


def _positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise _bad(key, value, "must be a positive finite number")


def check(s: RunSettings, *, device_count: int | None = None) -> None:
    """Refuse bad settings of either method before anything heavy is loaded."""
    _check_method(s.method)
    missing = [k for k in METHOD_SECTIONS[s.method] if getattr(s, k) is None]
    if missing:
        raise ConfigError(f"method={s.method!r} needs the config sections {missing}.")
    _check_common(s)
    if s.method == "es":
        _check_es(s, device_count=device_count)
    else:
        _check_grpo(s, device_count=device_count)


def _check_common(s: RunSettings) -> None:
    from esawd import tasks  # here, not at the top: the schema itself imports no JAX

    target = _resolve_task("task", s.task)
    if not target.is_target:
        raise _bad(
            "task.name",
            s.task.name,
            f"train on a target task {tasks.TARGET_TASKS}, 'jsonl' or an import path whose "
            "task has is_target = True",
        )
    _check_model_source("model.name", s.model.name)
    if s.model.compute_dtype not in ("float32", "bfloat16", "float16"):
        raise _bad("model.compute_dtype", s.model.compute_dtype, "float32, bfloat16 or float16")
    if s.task.data_dir and not Path(s.task.data_dir).expanduser().is_dir():
        raise _bad("task.data_dir", s.task.data_dir, "no such directory")
    _at_least_one(task__num_train=s.task.num_train, task__max_new_tokens=s.task.max_new_tokens)
    if s.eval.interval < 0 or s.eval.num_examples < -1 or s.eval.batch_size < 1:
        raise _bad(
            "eval", dataclasses.asdict(s.eval), "interval >= 0, num_examples >= -1, batch >= 1"
        )
    if s.eval.num_examples == tasks.ALL_EXAMPLES and target.generated(s.task.data_dir):
        raise _bad(
            "eval.num_examples",
            s.eval.num_examples,
            f"-1 (the whole test split) needs {s.task.name} from files (task.data_dir); "
            "generated problems have no fixed test set, give a number",
        )
    if s.eval.kl_task:
        _resolve_task("eval.kl_task", s.eval.kl_task)
        if s.eval.kl_task == s.task.name:
            raise _bad("eval.kl_task", s.eval.kl_task, "use a task the run is not trained on")
        _at_least_one(
            eval__kl_prompts=s.eval.kl_prompts, eval__kl_max_new_tokens=s.eval.kl_max_new_tokens
        )
    if s.checkpoint.interval < 1:
        raise _bad("checkpoint.interval", s.checkpoint.interval, "must be >= 1")


def _resolve_task(key: str, spec: Any):
    """The task `spec` names (tasks.resolve_task), or a ConfigError naming the setting."""
    from esawd import tasks

    try:
        return tasks.resolve_task(spec)
    except tasks.TaskSpecError as err:
        if isinstance(spec, str):
            raise _bad(key, spec, f"'' (none) or a task: {str(err).rstrip('.')}") from None
        name = f"{key}.{err.key}"
        raise _bad(name, getattr(spec, err.key, spec), str(err).rstrip(".")) from None


def _check_model_source(key: str, name: str, *, run_dir_ok: bool = False) -> None:
    """A preset, an existing HF directory or .gguf file, a hub id (or a run directory)."""
    from esawd import models

    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if name in models.PRESETS or Path(name).expanduser().exists() or looks_like_hub_id:
        return
    raise _bad(
        key,
        name,
        f"use a preset ({', '.join(sorted(models.PRESETS))}), an existing Hugging Face "
        "directory or .gguf file, a hub id 'org/name'"
        + (", or a run directory (its theta_0)" if run_dir_ok else ""),
    )


def _check_es(s: RunSettings, *, device_count: int | None) -> None:
    from esawd import es  # here, not at the top: the schema itself imports no JAX

    e = s.es
    _at_least_one(es__num_iterations=e.num_iterations)
    if e.population_size < 2:
        raise _bad("es.population_size", e.population_size, "need at least 2 members to z-score")
    if e.antithetic and e.population_size % 2:
        raise _bad(
            "es.population_size",
            e.population_size,
            "must be even with es.antithetic=True (K seeds give 2K members)",
        )
    _positive("es.sigma", e.sigma)
    _positive("es.alpha", e.alpha)
    if e.noise_sharing not in es.NOISE_SHARING:
        raise _bad("es.noise_sharing", e.noise_sharing, f"one of {es.NOISE_SHARING}")
    if e.precision not in es.PRECISIONS:
        raise _bad("es.precision", e.precision, f"one of {es.PRECISIONS}")
    if e.precision == "reference_float16":
        if s.model.compute_dtype != "float16":
            raise _bad(
                "model.compute_dtype", s.model.compute_dtype,
                "es.precision='reference_float16' keeps float16 weights: set it to 'float16'",
            )  # fmt: skip
        if e.noise_rank:
            raise _bad("es.noise_rank", e.noise_rank, "the reference's dynamics are full rank: 0")
        if e.reference_engines < 1:
            raise _bad("es.reference_engines", e.reference_engines, "must be >= 1 (run.sh: 8)")
    if e.noise_sharing == "reference" and e.noise_rank:
        raise _bad("es.noise_rank", e.noise_rank, "noise_sharing='reference' is full rank: 0")
    if not (isinstance(e.noise_rank, int) and e.noise_rank >= 0):
        raise _bad("es.noise_rank", e.noise_rank, "0 (full-rank noise) or a rank r >= 1")
    if e.members_per_batch < 0:
        raise _bad("es.members_per_batch", e.members_per_batch, "0 (automatic) or >= 1")
    if device_count is not None and not 0 <= e.num_devices <= device_count:
        raise _bad("es.num_devices", e.num_devices, f"0 (all) to {device_count}")
    _check_model_axis("es", e.model_axis, e.num_devices or device_count)
    if e.model_axis > 1 and e.precision == "reference_float16":
        why = "es.precision='reference_float16' reproduces one engine's dynamics: 1"
        raise _bad("es.model_axis", e.model_axis, why)
    try:
        es.check_awd(alpha=e.alpha, lam=s.awd.lam, kind=s.awd.kind)
    except ValueError as err:
        raise ConfigError(f"awd.kind={s.awd.kind!r}, awd.lam={s.awd.lam!r}: {err}") from None
    if s.awd.anchor:
        _check_model_source("awd.anchor", s.awd.anchor, run_dir_ok=True)
    if s.distributed is not None and s.distributed.cpu_devices < 0:
        raise _bad("distributed.cpu_devices", s.distributed.cpu_devices, "0 (default) or more")


def _check_model_axis(section: str, model_axis: int, devices: int | None) -> None:
    """`model_axis` devices per member must divide the devices the run uses."""
    if not (isinstance(model_axis, int) and model_axis >= 1):
        raise _bad(f"{section}.model_axis", model_axis, "devices per member: 1 or more")
    if devices is not None and devices % model_axis:
        fits = [d for d in range(1, devices + 1) if devices % d == 0]
        raise _bad(
            f"{section}.model_axis", model_axis,
            f"must divide the {devices} devices the run uses: one of {fits}"
            + (" (or set es.num_devices to a multiple)" if section == "es" else ""),
        )  # fmt: skip


def _check_grpo(s: RunSettings, *, device_count: int | None = None) -> None:
    g = s.grpo
    if device_count is not None and g.model_axis > device_count:
        raise _bad("grpo.model_axis", g.model_axis, f"at most the {device_count} devices")
    _check_model_axis("grpo", g.model_axis, None)
    _at_least_one(**{f"grpo__{k}": getattr(g, k) for k in (
        "num_steps", "prompts_per_step", "mini_batch_size", "micro_batch_size",
        "generate_batch_size",
    )})  # fmt: skip
    if g.group_size < 2:
        raise _bad("grpo.group_size", g.group_size, "need at least 2 completions per prompt")
    if g.prompts_per_step > s.task.num_train:
        raise _bad(
            "grpo.prompts_per_step",
            g.prompts_per_step,
            f"at most task.num_train={s.task.num_train} (raise task.num_train or lower this)",
        )
    if g.mini_batch_size > g.prompts_per_step:
        raise _bad(
            "grpo.mini_batch_size", g.mini_batch_size, f"at most {g.prompts_per_step} prompts"
        )
    for key in ("temperature", "learning_rate", "adv_eps", "adam_eps"):
        _positive(f"grpo.{key}", getattr(g, key))
    for key in ("kl_coef", "weight_decay", "max_grad_norm"):
        value = getattr(g, key)
        if not (math.isfinite(value) and value >= 0):
            raise _bad(f"grpo.{key}", value, "must be a finite number >= 0")
    if not 0 < g.clip_eps < 1:
        raise _bad("grpo.clip_eps", g.clip_eps, "must lie in (0, 1)")
    for key in ("adam_b1", "adam_b2"):
        if not 0 <= getattr(g, key) < 1:
            raise _bad(f"grpo.{key}", getattr(g, key), "must lie in [0, 1)")
