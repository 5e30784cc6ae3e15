"""The ES + AWD trainer for LLMs: Algorithm 1 of Schweighofer et al. (2026), end to end.

Reads top to bottom: settings -> checks -> data -> model -> mesh -> run directory and state
-> the loop (population, scores, fused ES + AWD step, evaluation, checkpoint) -> export.
`experiments/run.py` turns an ml-collections config into `Settings` and calls `train`.

Determinism. Seeds of iteration t are `es.iteration_seeds(es_seed, t)`, generation is greedy,
rewards are computed on the host from the generated tokens, and the update is a fixed
sequence of kernels; so a run resumed from a checkpoint ends bitwise equal to an
uninterrupted one, and theta_t can be replayed from theta_0 and `es_log.jsonl`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from esawd import es
from esawd.rundir import RunDir
from esawd.types import Params

# ---------------------------------------------------------------------------------------
# Settings.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    name: str = "smollm2-135m-instruct"  # preset, local HF dir, .gguf path or hub id
    compute_dtype: str = "float32"
    cache_dir: str = ""  # where the embedded model is fetched/converted ("" = default)


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    name: str = "countdown"
    data_dir: str = ""  # "" = procedural Countdown (no download) / the hub when online
    num_train: int = 200
    max_new_tokens: int = 1024
    train_split: str = "train"
    eval_split: str = "test"


@dataclasses.dataclass(frozen=True)
class ESSettings:
    population_size: int = 30  # N: members per iteration (2K with antithetic sampling)
    sigma: float = 1e-3
    alpha: float = 5e-4
    antithetic: bool = False
    num_iterations: int = 500
    seed: int = 0
    noise_sharing: str = "none"
    members_per_batch: int = 1  # members vmapped together on one device (0: from its memory)
    num_devices: int = 0  # devices on the `pop` mesh axis (0: every device of every process)


@dataclasses.dataclass(frozen=True)
class AWDSettings:
    kind: str = "l2"  # "none", "l1" or "l2"
    lam: float = 10.0


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    interval: int = 50  # evaluate every this many iterations (0: only at the end)
    num_examples: int = 200
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class LogSettings:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "esawd"
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class Settings:
    workdir: str
    model: ModelSettings = ModelSettings()
    task: TaskSettings = TaskSettings()
    es: ESSettings = ESSettings()
    awd: AWDSettings = AWDSettings()
    eval: EvalSettings = EvalSettings()
    checkpoint_interval: int = 50
    checkpoint_max_to_keep: int | None = 3
    log: LogSettings = LogSettings()
    export: bool = True


class ConfigError(ValueError):
    """A setting the trainer refuses, raised before any model is loaded."""


# Keys a resumed run may change; every other key must match the stored config.json.
RESUMABLE_CHANGES = (
    "distributed.",
    "es.num_iterations",
    "es.num_devices",
    "es.members_per_batch",
    "eval.",
    "log.",
    "checkpoint",
    "export",
    "model.cache_dir",
    "task.data_dir",
)


def check_settings(s: Settings) -> None:
    """Refuse bad settings with an error naming the key, the value and the valid range."""
    from esawd import models, tasks

    def bad(key: str, value: Any, valid: str) -> ConfigError:
        return ConfigError(f"{key}={value!r} is invalid: {valid}.")

    if s.task.name not in tasks.TASK_NAMES:
        raise bad("task.name", s.task.name, f"valid tasks are {', '.join(tasks.TASK_NAMES)}")
    if not tasks.get_task(s.task.name).is_target:
        raise bad("task.name", s.task.name, f"train on a target task {tasks.TARGET_TASKS}")
    name = s.model.name
    path = Path(name).expanduser()
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if name not in models.PRESETS and not path.exists() and not looks_like_hub_id:
        raise bad(
            "model.name",
            name,
            f"use a preset ({', '.join(sorted(models.PRESETS))}), an existing Hugging Face "
            "directory or .gguf file, or a hub id 'org/name'",
        )
    if s.model.compute_dtype not in ("float32", "bfloat16", "float16"):
        raise bad("model.compute_dtype", s.model.compute_dtype, "float32, bfloat16 or float16")
    if s.task.data_dir and not Path(s.task.data_dir).expanduser().is_dir():
        raise bad("task.data_dir", s.task.data_dir, "no such directory")
    for key, value in (
        ("task.num_train", s.task.num_train),
        ("task.max_new_tokens", s.task.max_new_tokens),
        ("es.num_iterations", s.es.num_iterations),
    ):
        if value < 1:
            raise bad(key, value, "must be >= 1")
    if s.es.population_size < 2:
        raise bad("es.population_size", s.es.population_size, "need at least 2 members to z-score")
    if s.es.antithetic and s.es.population_size % 2:
        raise bad(
            "es.population_size",
            s.es.population_size,
            "must be even with es.antithetic=True (K seeds give 2K members)",
        )
    for key, value in (("es.sigma", s.es.sigma), ("es.alpha", s.es.alpha)):
        if not (math.isfinite(value) and value > 0):
            raise bad(key, value, "must be a positive finite number")
    if s.es.noise_sharing not in es.NOISE_SHARING:
        raise bad("es.noise_sharing", s.es.noise_sharing, f"one of {es.NOISE_SHARING}")
    if s.es.members_per_batch < 0:
        raise bad("es.members_per_batch", s.es.members_per_batch, "0 (from memory) or >= 1")
    if not 0 <= s.es.num_devices <= jax.device_count():
        raise bad("es.num_devices", s.es.num_devices, f"0 (all) to {jax.device_count()}")
    try:
        es.check_awd(alpha=s.es.alpha, lam=s.awd.lam, kind=s.awd.kind)
    except ValueError as e:
        raise ConfigError(f"awd.kind={s.awd.kind!r}, awd.lam={s.awd.lam!r}: {e}") from None
    if s.eval.interval < 0 or s.eval.num_examples < 0 or s.eval.batch_size < 1:
        raise bad("eval", dataclasses.asdict(s.eval), "interval, num_examples >= 0, batch >= 1")
    if s.checkpoint_interval < 1:
        raise bad("checkpoint.interval", s.checkpoint_interval, "must be >= 1")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(
    stored: dict[str, Any],
    current: dict[str, Any],
    *,
    workdir: str,
    resumable: tuple[str, ...] = RESUMABLE_CHANGES,
) -> None:
    """Refuse to resume a run directory whose stored config differs in a key that matters.

    Keys starting with one of `resumable` may change between runs.
    """
    a, b = _flatten(stored), _flatten(current)
    for key in sorted(set(a) | set(b)):
        if key.startswith(resumable) or a.get(key) == b.get(key):
            continue
        raise ConfigError(
            f"{workdir} holds a run with {key}={a.get(key)!r}, but this config has "
            f"{key}={b.get(key)!r}; use a new workdir, or the stored value to resume."
        )


# ---------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------


def load_examples(s: TaskSettings, *, eval_size: int, seed: int) -> tuple[list, list]:
    """Training prompts and held-out evaluation examples of the target task."""
    from esawd import tasks

    task = tasks.get_task(s.name)
    if not s.data_dir and hasattr(task, "generate"):
        # Procedural Countdown: disjoint seeds for the training and held-out sets.
        return task.generate(s.num_train, seed=2 * seed), task.generate(
            eval_size, seed=2 * seed + 1
        )
    data_dir = s.data_dir or None
    train = task.load(s.train_split, data_dir)
    held_out = task.load(s.eval_split, data_dir)
    if len(train) < s.num_train:
        raise ConfigError(
            f"task.num_train={s.num_train} but {s.name}/{s.train_split} has {len(train)} rows."
        )
    held_out = tasks.eval_subset(held_out, size=eval_size) if eval_size else []
    return train[: s.num_train], held_out


def encode(task, examples: Sequence[dict], tokenizer, *, bucket: int = 64):
    """Left-padded prompt ids and mask [B, T] through the tokenizer's chat template."""
    from esawd import tasks

    conversations = [task.messages(e) for e in examples]
    return tasks.encode_prompts(conversations, tokenizer, pad_to_multiple_of=bucket)


def score(task, tokenizer, tokens: np.ndarray, lengths: np.ndarray, examples) -> dict:
    """Decode each row and score it with the task's reward: arrays [B] per component."""
    rows = [tokens[i, : int(n)] for i, n in enumerate(lengths)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    rewards = [task.reward(text, ex) for text, ex in zip(texts, examples, strict=True)]
    out = {k: np.array([r[k] for r in rewards], np.float64) for k in rewards[0]}
    out["accuracy"] = (out["answer_reward"] > 0).astype(np.float64)
    out["tokens"] = np.asarray(lengths, np.float64)
    return out


# ---------------------------------------------------------------------------------------
# Population evaluation: generation on device, scoring on the host, overlapped.
# ---------------------------------------------------------------------------------------


def member_bytes(config, *, batch: int, width: int, max_new_tokens: int) -> int:
    """An estimate of the device memory one population member's generation needs: its
    perturbed float32 parameters and their compute-dtype and decode-layout copies, the KV
    cache, the prefill's largest activations (the MLP's and the attention scores over the
    cache) and the logits."""
    c = config
    item = np.dtype(c.dtype).itemsize
    slots = width + max_new_tokens
    params = c.num_params() * (4 + 2 * item)
    cache = 2 * c.n_layers * batch * c.n_kv_heads * c.head_dim * slots * item
    prefill = batch * width * (2 * c.d_ff + 4 * c.d_model) * item
    scores = batch * c.n_heads * width * slots * 4 * 2  # scores and probabilities, float32
    logits = batch * c.vocab_size * 4 * 2
    return int(params + cache + prefill + scores + logits)


def members_per_batch_for(
    device, *, member_bytes: int, members: int, reserved_bytes: int = 0, headroom: float = 0.8
) -> int:
    """How many members to vmap together on `device` (es.members_per_batch=0): as many of its
    `members` as fit, at `member_bytes` each, in `headroom` of its memory limit less
    `reserved_bytes` (what the trainer keeps there anyway). The limit, not the memory free at
    the moment, so that every process of a multi-host run picks the same number. A device that
    reports no limit (the CPU) gets 1: vmapping members measured no faster there
    (docs/benchmarks.md), since each member brings its own weights."""
    stats = device.memory_stats()
    if not stats or not stats.get("bytes_limit"):
        return 1
    free = headroom * stats["bytes_limit"] - reserved_bytes
    return max(1, min(members, int(free) // max(1, member_bytes)))


def make_generate_fn(
    config, prompt_ids, prompt_mask, *, max_new_tokens: int, ignore_eos: bool = False
) -> Callable:
    """fitness(params, key) -> (tokens [B, T], lengths [B]): greedy generation on the prompts.

    The prompts are the same at every call, so they are padded only to the longest of them
    (bucket=1): one compilation either way, and no prefill work or cache slots spent on a
    wider bucket (Countdown's 139-145-token prompts would otherwise be padded to 192).
    """
    from esawd import sampling

    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)

    def generate(params, key):
        del key  # greedy decoding, as in the paper
        return sampling.generate(
            config, params, ids, mask, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
            bucket=1,
        )  # fmt: skip

    return generate


def evaluate_members(
    generate_fn: Callable,
    params: Params,
    seeds: np.ndarray,
    score_fn: Callable[[np.ndarray, np.ndarray], dict],
    *,
    sigma: float,
    antithetic: bool,
    mesh,
    members_per_batch: int,
    noise_sharing: str,
) -> dict[str, np.ndarray]:
    """Per-member mean scores, [N] or [2, K]; each group is scored while the next generates.

    Also returns `score_seconds`: host decoding + reward time, overlapped with generation.
    """
    width = mesh.shape["pop"] * members_per_batch
    per_group = max(1, width // 2) if antithetic else width
    groups = [seeds[i : i + per_group] for i in range(0, len(seeds), per_group)]
    results: list[dict] = []
    score_seconds: list[float] = []
    pending = None

    def finish(out):
        tokens, lengths = (es.host_value(x) for x in out)  # blocks on this group only
        lead = tokens.shape[:-2]  # [2, g] or [g]
        flat_t = tokens.reshape(-1, *tokens.shape[-2:])
        flat_l = lengths.reshape(-1, lengths.shape[-1])
        t0 = time.perf_counter()
        rows = [score_fn(t, n) for t, n in zip(flat_t, flat_l, strict=True)]
        score_seconds.append(time.perf_counter() - t0)
        results.append({k: np.array([r[k].mean() for r in rows]).reshape(lead) for k in rows[0]})

    for group in groups:
        out = es.evaluate_population(
            generate_fn,
            params,
            group,
            sigma=sigma,
            antithetic=antithetic,
            mesh=mesh,
            members_per_batch=members_per_batch,
            noise_sharing=noise_sharing,
        )  # dispatched asynchronously
        if pending is not None:
            finish(pending)
        pending = out
    finish(pending)
    out = {k: np.concatenate([r[k] for r in results], axis=-1) for k in results[0]}
    out["score_seconds"] = np.float64(sum(score_seconds))  # host time, overlapped
    return out


def evaluate_params(
    config, params, tokenizer, task, examples, *, max_new_tokens: int, batch_size: int
) -> dict[str, float]:
    """Greedy accuracy, format rate and reward of `params` on held-out examples."""
    from esawd import sampling

    parts = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = encode(task, chunk, tokenizer)
        tokens, lengths = sampling.generate(
            config, params, batch.ids, batch.mask, max_new_tokens=max_new_tokens
        )
        parts.append(score(task, tokenizer, *jax.device_get((tokens, lengths)), chunk))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {
        "accuracy": float(merged["accuracy"].mean()),
        "format_rate": float((merged["format_reward"] > 0).mean()),
        "reward": float(merged["reward"].mean()),
        "tokens": float(merged["tokens"].mean()),
        "num_examples": len(examples),
    }


# ---------------------------------------------------------------------------------------
# Replay.
# ---------------------------------------------------------------------------------------


def replay(
    theta0: Params,
    es_rows: Sequence[dict[str, Any]],
    *,
    upto: int,
    anchor: es.HostAnchor | None = None,
    start: tuple[int, Params] | None = None,
) -> Params:
    """theta_t for t = `upto`, rebuilt from theta_0 and the logged seeds and coefficients.

    `start=(s, theta_s)` continues from a known theta_s (a checkpoint, or an earlier replay)
    instead of from theta_0; the anchor is theta_0 either way. The given trees are not changed.
    """
    anchor = es.host_anchor(theta0) if anchor is None else anchor
    done, params = start if start is not None else (0, theta0)
    if done > upto:
        raise ValueError(f"cannot replay backwards from iteration {done} to {upto}.")
    params = jax.tree.map(jnp.copy, params)  # es_step donates its input
    for row in sorted(es_rows, key=lambda r: r["iteration"]):
        if row["iteration"] <= done:
            continue
        if row["iteration"] > upto:
            break
        if row["iteration"] != done + 1:
            raise ValueError(
                f"es_log is missing iteration {done + 1} (next row: {row['iteration']})"
            )
        params = es.es_step(
            params,
            anchor,
            np.asarray(row["seeds"], np.uint32),
            np.asarray(row["coeffs"], np.float32),
            alpha=row["alpha"],
            population_size=row["population_size"],
            lam=row["lam"],
            kind=row["kind"],
            noise_sharing=row["noise_sharing"],
        )
        done = row["iteration"]
    if done != upto:
        raise ValueError(f"es_log ends at iteration {done}; cannot replay iteration {upto}.")
    return params


# ---------------------------------------------------------------------------------------
# Logging.
# ---------------------------------------------------------------------------------------


class Loggers:
    """metrics.jsonl always; TensorBoard and Weights & Biases when enabled."""

    def __init__(self, run: RunDir, s: LogSettings, config: dict[str, Any]):
        self.run = run
        self.tb = self.wandb = None
        if s.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run.root / "tensorboard"))
        if s.wandb:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "log.wandb=True needs Weights & Biases: `pip install wandb`."
                ) from None
            self.wandb = wandb.init(
                project=s.wandb_project, dir=str(run.root), config=config, resume="allow"
            )

    enabled = True  # False on every process but the first of a multi-process run

    def write(self, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.run.metrics.append({"iteration": iteration, **metrics})
        scalars = {
            k: v
            for k, v in _flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k.replace(".", "/"), v, iteration)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _stats(prefix: str, x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, np.float64).ravel()
    return {
        f"{prefix}_mean": float(x.mean()),
        f"{prefix}_std": float(x.std()),
        f"{prefix}_min": float(x.min()),
        f"{prefix}_max": float(x.max()),
    }


def local_copy(params: Params) -> Params:
    """This process's copy of replicated parameters, for work each process does alone."""
    return jax.tree.map(lambda x: x if x.is_fully_addressable else x.addressable_data(0), params)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------


def train(s: Settings, *, config_dict: dict[str, Any] | None = None) -> Params:
    """Run (or resume) ES + AWD as `s` says; returns the final parameters."""
    from tqdm.auto import tqdm

    from esawd import models, tasks

    # ---- checks, before anything heavy is loaded
    config_dict = dataclasses.asdict(s) if config_dict is None else config_dict
    check_settings(s)
    run = RunDir(s.workdir, max_to_keep=s.checkpoint_max_to_keep)
    stored = run.read_config()
    if stored is not None:
        check_resumable(stored, config_dict, workdir=s.workdir)
    task = tasks.get_task(s.task.name)
    train_examples, eval_examples = load_examples(
        s.task, eval_size=s.eval.num_examples, seed=s.es.seed
    )
    primary = jax.process_index() == 0  # the one process that writes logs and exports
    if primary:
        run.write_config(config_dict)

    # ---- model, prompts, mesh
    model = models.load(s.model.name, dtype=s.model.compute_dtype, cache=s.model.cache_dir or None)
    config, tokenizer = model.config, model.tokenizer
    prompts = encode(task, train_examples, tokenizer)
    mesh = es.population_mesh(jax.devices()[: s.es.num_devices or None])
    replicated = NamedSharding(mesh, PartitionSpec())
    generate_fn = make_generate_fn(
        config, prompts.ids, prompts.mask, max_new_tokens=s.task.max_new_tokens
    )
    per_batch = s.es.members_per_batch
    if not per_batch:  # from the memory of this process's first device
        width = int(np.asarray(prompts.mask).sum(axis=1).max())
        need = member_bytes(config, batch=len(train_examples), width=width,
                            max_new_tokens=s.task.max_new_tokens)  # fmt: skip
        per_batch = members_per_batch_for(
            jax.local_devices()[0], member_bytes=need,
            members=-(-s.es.population_size // mesh.size),
            reserved_bytes=3 * 4 * config.num_params(),  # theta_t, its update, an anchor slice
        )  # fmt: skip

    def score_fn(tokens, lengths):
        return score(task, tokenizer, tokens, lengths, train_examples)

    # ---- state: theta_0 from disk into host memory; theta_t from the latest checkpoint
    has_anchor = run.has_anchor()
    _sync("anchor checked")  # every process decides before any starts writing
    if not has_anchor:
        run.save_anchor(model.params)  # every process takes part in an Orbax save
    _sync("anchor written")
    anchor = es.host_anchor(run.restore_anchor_numpy(model.params))
    params = jax.device_put(model.params, replicated)
    del model
    start = run.latest_step() or 0
    if start:
        params, meta = run.restore(start, params)
        if meta.get("es_seed") != s.es.seed:
            raise ConfigError(f"checkpoint {start} was made with es.seed={meta.get('es_seed')}")
    if primary:
        run.metrics.truncate_after(start)
        run.es_log.truncate_after(start)
    logs = Loggers(run, s.log if primary else LogSettings(tensorboard=False), config_dict)
    logs.enabled = primary
    n = s.es.population_size
    k = n // 2 if s.es.antithetic else n
    bar = tqdm(
        total=s.es.num_iterations,
        initial=start,
        disable=not (s.log.progress and primary),
        desc="ES",
        unit="it",
    )

    def evaluate(t: int) -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate_params(
            config,
            local_copy(params),
            tokenizer,
            task,
            eval_examples,
            max_new_tokens=s.task.max_new_tokens,
            batch_size=s.eval.batch_size,
        )
        return {**{f"eval/{k}": v for k, v in m.items()}, "time/eval": time.perf_counter() - t0}

    if start == 0 and s.eval.num_examples and s.eval.interval:
        logs.write(0, {**evaluate(0), "drift_norm": 0.0})

    # ---- the loop
    checkpoint_seconds = None
    for t in range(start + 1, s.es.num_iterations + 1):
        t_iter = time.perf_counter()
        seeds = np.asarray(es.iteration_seeds(base_seed=s.es.seed, iteration=t, population_size=k))
        member = evaluate_members(
            generate_fn,
            params,
            seeds,
            score_fn,
            sigma=s.es.sigma,
            antithetic=s.es.antithetic,
            mesh=mesh,
            members_per_batch=per_batch,
            noise_sharing=s.es.noise_sharing,
        )
        t_pop = time.perf_counter()
        if not np.all(np.isfinite(member["reward"])):
            raise FloatingPointError(
                f"iteration {t}: non-finite rewards {member['reward']}; the last good "
                f"checkpoint ({run.latest_step()}) is intact."
            )
        coeffs = es.normalize_rewards(member["reward"], antithetic=s.es.antithetic)
        params, drift = es.es_step(
            params,
            anchor,
            seeds,
            coeffs,
            alpha=s.es.alpha,
            population_size=n,
            lam=s.awd.lam,
            kind=s.awd.kind,
            noise_sharing=s.es.noise_sharing,
            with_drift=True,
        )
        finite = math.isfinite(drift)  # a NaN or Inf anywhere makes the drift norm non-finite
        t_update = time.perf_counter()
        if not finite:
            raise FloatingPointError(
                f"iteration {t}: the update produced non-finite parameters; the last good "
                f"checkpoint ({run.latest_step()}) is intact."
            )
        if primary:
            run.es_log.append(
                {
                    "iteration": t,
                    "seeds": seeds.tolist(),
                    "coeffs": [float(c) for c in coeffs],
                    "alpha": s.es.alpha,
                    "population_size": n,
                    "lam": s.awd.lam,
                    "kind": s.awd.kind,
                    "noise_sharing": s.es.noise_sharing,
                }
            )
        metrics = {
            **_stats("reward", member["reward"]),
            "format_reward": float(member["format_reward"].mean()),
            "answer_reward": float(member["answer_reward"].mean()),
            "accuracy": float(member["accuracy"].mean()),
            "tokens_mean": float(member["tokens"].mean()),
            "tokens_max": float(member["tokens"].max()),
            "drift_norm": drift,
            "time/population": t_pop - t_iter,  # perturb + generate (device) + score (host)
            "time/score": float(member["score_seconds"]),  # host part, overlapped
            "time/update": t_update - t_pop,  # fused ES + AWD step
        }
        if s.eval.num_examples and (
            (s.eval.interval and t % s.eval.interval == 0) or t == s.es.num_iterations
        ):
            metrics.update(evaluate(t))
        metrics["time/iteration"] = time.perf_counter() - t_iter
        if checkpoint_seconds is not None:  # the checkpoint saved after the previous row
            metrics["time/last_checkpoint"], checkpoint_seconds = checkpoint_seconds, None
        # The row goes first: a crash after it but before the checkpoint resumes from the
        # previous checkpoint and writes this row again; one after the checkpoint has it.
        logs.write(t, metrics)
        if t % s.checkpoint_interval == 0 or t == s.es.num_iterations:
            t0 = time.perf_counter()
            run.save(t, params, {"iteration": t, "es_seed": s.es.seed})
            checkpoint_seconds = time.perf_counter() - t0
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.2f}")
        bar.update(1)
    bar.close()

    # ---- export
    if primary and s.export and not (start == s.es.num_iterations and run.final_dir.exists()):
        host = jax.tree.map(es.host_value, params)
        models.export(models.Model(config, host, tokenizer), run.final_dir)
    _sync("exported")
    logs.close()
    run.close()
    return params
