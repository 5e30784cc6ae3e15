"""The training loop every method shares: set-up, resume, schedule, logging, checkpoints, export.

Reads top to bottom, as big_vision's trainers do: checks -> data -> model -> theta_0 in the
run directory -> state (fresh or from the latest checkpoint) -> the loop -> export. A method
(`esawd.es.method.ESMethod`, `esawd.grpo.GRPOMethod`) supplies only its own parts:

    plan(ctx) -> MemoryPlan                    # memory per device, before weights are loaded
    init(ctx, model, theta0) -> state          # a dict of pytrees; "params" is theta_t
    compile(ctx, state) -> seconds             # compile the step's generation (dry_run)
    step(ctx, state, t) -> (state, metrics)   # one iteration; raises on non-finite values
    postfix(metrics) -> dict                   # what the progress bar shows
    label, unit, num_steps, seed_meta, data_seed   # names, length, seeds

Everything in `state` is checkpointed, atomically, as one Orbax checkpoint ("params" plus one
item per other key, e.g. AdamW's "opt_state"). The metrics row of iteration t is written
before its checkpoint, so a crash between the two resumes from the previous checkpoint and
writes the row again, and a crash after the checkpoint finds the row there.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from esawd import analysis, es, memplan, models, report, scoring, tasks
from esawd.rundir import RunDir, stored_config
from esawd.settings import (
    ConfigError,
    LogSettings,
    RunSettings,
    check,
    check_resumable,
    flatten,
    to_dict,
)
from esawd.types import Params


@dataclasses.dataclass(frozen=True)
class Context:
    """What a method's parts may read: the settings and the run's fixed inputs."""

    settings: RunSettings
    run: RunDir | None  # None in a dry run, which writes nothing
    primary: bool  # the one process that writes logs and exports
    task: Any
    config: models.ModelConfig
    tokenizer: Any
    train_examples: list
    eval_examples: list
    prompts: Any  # PromptBatch of the training examples


class Method(Protocol):
    label: str  # progress bar: "ES", "GRPO"
    unit: str
    num_steps: int
    seed_meta: dict[str, int]  # stored in every checkpoint; a resumed run must match it
    data_seed: int  # procedural tasks draw their training and held-out examples from it
    masters_dtype: str  # theta is kept in this dtype from theta_0 on ("float32" but for
    # ES's reproduction switch es.precision="reference_float16")

    def plan(self, ctx: Context) -> memplan.MemoryPlan: ...

    def init(self, ctx: Context, model: models.Model, theta0: Params) -> dict[str, Any]: ...

    def compile(self, ctx: Context, state: dict) -> float: ...

    def step(self, ctx: Context, state: dict, t: int) -> tuple[dict, dict[str, Any]]: ...

    def postfix(self, metrics: dict[str, Any]) -> dict[str, str]: ...


def itstime(t: int, *, every: int, last: int) -> bool:
    """Whether iteration t is one of every `every` (0: never), or the last."""
    return t == last or (every > 0 and t % every == 0)


def local_copy(params: Params) -> Params:
    """Parameters this process can compute with alone: as they are when all their devices are
    its own (replicated or split over `model`), else its copy of replicated ones, or (split
    across processes) gathered onto its first device."""

    def local(x):
        if x.is_fully_addressable:
            return x
        if x.is_fully_replicated:
            return x.addressable_data(0)
        return jax.device_put(es.host_value(x), jax.local_devices()[0])

    return jax.tree.map(local, params)


def sync(name: str) -> None:
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # only multi-process runs need it

        multihost_utils.sync_global_devices(name)


class Loggers:
    """metrics.jsonl always; TensorBoard and Weights & Biases when enabled.

    A W&B run's id is kept in <workdir>/wandb_id, so a resumed run continues the same W&B run.
    """

    def __init__(self, run: RunDir, s: LogSettings, config: dict[str, Any], *, enabled=True):
        self.run, self.enabled = run, enabled
        self.tb = self.wandb = None
        if s.tensorboard:
            from tensorboardX import SummaryWriter  # optional at import time: heavy

            self.tb = SummaryWriter(str(run.root / "tensorboard"))
        if s.wandb:
            try:
                import wandb  # an optional extra
            except ImportError:
                raise ConfigError(
                    "log.wandb=True needs Weights & Biases: `pip install wandb`."
                ) from None
            id_path = run.root / "wandb_id"
            if not id_path.exists():
                id_path.write_text(secrets.token_hex(8) + "\n")
            self.wandb = wandb.init(
                project=s.wandb_project,
                dir=str(run.root),
                config=config,
                id=id_path.read_text().strip(),
                resume="allow",
            )

    def write(self, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.run.metrics.append({"iteration": iteration, **metrics})
        scalars = {
            k: v
            for k, v in flatten(metrics).items()
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


def setup(s: RunSettings, method: Method) -> Context:
    """Everything before a file is written or a weight is loaded: the checks, the examples,
    the model's config and tokenizer, and the memory plan, printed, and refused when the run
    cannot fit. The context has no run directory yet (`run=None`)."""
    check(s, device_count=jax.device_count())
    stored = stored_config(s.workdir)  # read without creating the directory
    if stored is not None:
        check_resumable(stored, to_dict(s), workdir=s.workdir)
    train_examples, eval_examples = scoring.load_examples(
        s.task, data_dir=s.task.data_dir, num_train=s.task.num_train,
        train_split=s.task.train_split, eval_split=s.task.eval_split,
        eval_size=s.eval.num_examples, seed=method.data_seed,
    )  # fmt: skip
    shell = models.load(s.model.name, dtype=s.model.compute_dtype,
                        cache=s.model.cache_dir or None, weights=False)  # fmt: skip
    task = tasks.resolve_task(s.task)
    ctx = Context(
        s, None, jax.process_index() == 0, task, shell.config, shell.tokenizer, train_examples,
        eval_examples, scoring.encode(task, train_examples, shell.tokenizer),
    )  # fmt: skip
    plan = method.plan(ctx)
    if ctx.primary:
        print(plan.format(), flush=True)
    if not plan.fits:
        raise ConfigError(f"model.name={s.model.name!r}: {plan.refusal()}")
    return ctx


def load_model(ctx: Context) -> models.Model:
    """The model's weights (the config and tokenizer come from `setup`)."""
    m = ctx.settings.model
    model = models.load(m.name, dtype=m.compute_dtype, cache=m.cache_dir or None, tokenizer=False)
    return dataclasses.replace(model, tokenizer=ctx.tokenizer)


def dry_run(ctx: Context, method: Method) -> None:
    """dry_run=True: the mesh and the plan (`setup`), the weights loaded and placed, and one
    member's generation compiled (not run); prints the compile time and writes nothing."""
    t0 = time.perf_counter()
    model = load_model(ctx)
    state = method.init(ctx, model, model.params)
    loaded = time.perf_counter() - t0
    seconds = method.compile(ctx, state)
    if ctx.primary:
        print(
            f"dry run: weights loaded and placed in {loaded:.1f} s, the generation compiled in "
            f"{seconds:.1f} s; nothing was written to {ctx.settings.workdir}.",
            flush=True,
        )


def start_state(ctx: Context, method: Method, model: models.Model) -> tuple[dict, int, Params]:
    """theta_0 written once into the run directory, then the state, from the latest checkpoint
    when there is one; returns (state, start iteration, theta_0 as host arrays)."""
    run = ctx.run
    s = ctx.settings
    source = s.awd.anchor if s.awd is not None else ""
    cast = lambda p: jax.tree.map(lambda x: x.astype(method.masters_dtype), p)  # noqa: E731
    if method.masters_dtype != "float32":  # theta_0 itself is rounded, once, for the anchor
        model = dataclasses.replace(model, params=cast(model.params))
    has_anchor = run.has_anchor()
    sync("anchor checked")  # every process decides before any starts writing
    if not has_anchor:  # every process takes part in an Orbax save
        if source:  # continual fine-tuning: start from model.name, anchored to another model
            run.save_anchor(cast(anchor_params(source, model, s.model)))
            run.save_start(model.params)
        else:
            run.save_anchor(model.params)
    sync("anchor written")
    theta0 = run.restore_anchor_numpy(model.params)
    state = method.init(ctx, model, theta0)
    start = run.latest_step() or 0
    if start:
        others = {k: v for k, v in state.items() if k != "params"}
        params, meta, extra = run.restore(start, state["params"], extra_like=others)
        state = {"params": params, **extra}
        for key, value in method.seed_meta.items():
            if meta.get(key) != value:
                name = key.replace("_", ".")
                raise ConfigError(f"checkpoint {start} was made with {name}={meta.get(key)}")
    if ctx.primary:
        for log in (run.metrics, run.es_log):
            if log.path.exists():
                log.truncate_after(start)
    return state, start, theta0


def anchor_params(source: str, model: models.Model, m) -> Params:
    """theta_0 named by `awd.anchor`: a run directory's theta_0, or any model source; it must
    have the parameters of the model the run starts from (same tree, same shapes)."""
    root = Path(source).expanduser()
    if (root / "config.json").is_file() and RunDir(root).has_anchor():
        params = RunDir(root).restore_anchor_numpy(model.params)
        what = f"the run directory {root} (its theta_0)"
    else:
        params = models.load(source, dtype=m.compute_dtype, cache=m.cache_dir or None,
                             tokenizer=False).params  # fmt: skip
        what = f"the model {source!r}"
    want = jax.tree.map(lambda x: tuple(x.shape), model.params)
    got = jax.tree.map(lambda x: tuple(np.shape(x)), params)
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
        raise ConfigError(
            f"awd.anchor={source!r}: {what} does not have the parameters of model.name="
            f"{m.name!r} (a different architecture or size); anchor to the same model family."
        )
    return jax.tree.map(lambda x, like: np.asarray(x, like.dtype), params, model.params)


def kl_probe(ctx: Context, theta0: Params) -> Callable[[Params], float] | None:
    """KL(base || tuned) on `eval.kl_task` prompts (None when unset): the base model's samples
    are drawn at the first evaluation (seeded, so a resumed run draws the same) and scored at
    each; a finished run that evaluates nothing draws none."""
    s = ctx.settings.eval
    if not s.kl_task:
        return None
    cache: list = []  # the samples, once drawn

    def kl(params: Params) -> float:
        if not cache:
            examples = analysis.task_examples(
                s.kl_task, {}, data_dir=ctx.settings.task.data_dir, num_examples=s.kl_prompts
            )
            cache.append(analysis.sample_base(
                ctx.config, jax.device_put(theta0), ctx.tokenizer, tasks.resolve_task(s.kl_task),
                examples, max_new_tokens=s.kl_max_new_tokens, seed=0, batch_size=s.batch_size,
            ))  # fmt: skip
        samples = cache[0]
        logp = [analysis.log_probs(ctx.config, params, samples, b) for b in range(len(samples.ids))]
        return analysis.kl_divergence(samples, logp)["kl"]

    return kl


def train(s: RunSettings, method: Method) -> Params | None:
    """Run (or resume) `method` as `s` says; returns the final parameters (None for a dry
    run)."""
    ctx = setup(s, method)
    if s.dry_run:
        return dry_run(ctx, method)
    run = RunDir(s.workdir, max_to_keep=s.checkpoint.max_to_keep,
                 async_save=s.checkpoint.async_save)  # fmt: skip
    ctx = dataclasses.replace(ctx, run=run)
    primary, task, eval_examples = ctx.primary, ctx.task, ctx.eval_examples
    if primary:
        run.write_config(to_dict(s))
    model = load_model(ctx)
    t_start = time.perf_counter()
    state, start, theta0 = start_state(ctx, method, model)
    del model
    kl = kl_probe(ctx, theta0)
    logs = Loggers(
        run, s.log if primary else LogSettings(tensorboard=False), to_dict(s), enabled=primary
    )
    bar = tqdm(total=method.num_steps, initial=start, desc=method.label, unit=method.unit,
               disable=not (s.log.progress and primary))  # fmt: skip

    def heldout(params) -> dict[str, Any]:
        """Held-out accuracy (with which examples were right), drift and KL of theta_t."""
        t0 = time.perf_counter()
        params = local_copy(params)
        m = scoring.heldout_accuracy(
            ctx.config, params, ctx.tokenizer, task, eval_examples,
            max_new_tokens=s.task.max_new_tokens, batch_size=s.eval.batch_size,
        )  # fmt: skip
        drift = analysis.weight_drift(params, theta0)
        row = {f"eval/{k}": v for k, v in m.items()}
        row |= {"drift/frobenius": drift["frobenius"], "drift/relative": drift["relative"]}
        if kl is not None:
            row[f"kl/{s.eval.kl_task}"] = kl(params)
        return {**row, "time/eval": time.perf_counter() - t0}

    shown: dict[str, str] = {}  # the last held-out accuracy stays on the bar until the next
    if start == 0 and s.eval.num_examples and s.eval.interval:
        row = heldout(state["params"])
        logs.write(0, {**row, "drift_norm": 0.0})
        shown = {"held-out": f"{row['eval/accuracy']:.2f}"}
        bar.set_postfix(shown)
    last, checkpoint_seconds = method.num_steps, None
    for t in range(start + 1, last + 1):
        t_iter = time.perf_counter()
        state, metrics = method.step(ctx, state, t)
        if s.eval.num_examples and itstime(t, every=s.eval.interval, last=last):
            metrics.update(heldout(state["params"]))
        metrics["time/iteration"] = time.perf_counter() - t_iter
        if checkpoint_seconds is not None:  # the checkpoint saved after the previous row
            metrics["time/last_checkpoint"], checkpoint_seconds = checkpoint_seconds, None
        logs.write(t, metrics)  # the row goes first (see the module docstring)
        if itstime(t, every=s.checkpoint.interval, last=last):
            t0 = time.perf_counter()
            others = {k: v for k, v in state.items() if k != "params"}
            run.save(t, state["params"], {"iteration": t, **method.seed_meta}, extra=others)
            checkpoint_seconds = time.perf_counter() - t0
        if "eval/accuracy" in metrics:
            shown = {"held-out": f"{metrics['eval/accuracy']:.2f}"}
        bar.set_postfix({**method.postfix(metrics), **shown})
        bar.update(1)
    bar.close()
    if s.export and not (start == last and run.final_dir.exists()):
        # every process: gathering parameters split across processes is a collective
        host = jax.tree.map(es.host_value, state["params"])
        if primary:
            models.export(models.Model(ctx.config, host, ctx.tokenizer), run.final_dir)
    sync("exported")
    logs.close()
    run.close()
    if primary and s.log.summary:
        summary = report.write_summary(run.root, session_seconds=time.perf_counter() - t_start)
        print(report.format_summary(summary), flush=True)
    return state["params"]
