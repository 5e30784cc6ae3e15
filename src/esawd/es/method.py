"""ES + AWD as a training method: Algorithm 1 of Schweighofer et al. (2026), the parts the
shared loop (`esawd.loop`) does not own.

One iteration t: the seeds of iteration t -> each member's greedy generation on the training
prompts, spread over the `pop` mesh axis (`population_fitness`: generation on device,
scoring on the host, overlapped) -> rewards z-scored -> the fused ES + AWD step, streaming
theta_0 from host memory -> one row of `es_log.jsonl` (seeds and coefficients).

Determinism. Seeds of iteration t are `iteration_seeds(es_seed, t)`, generation is greedy,
rewards are computed on the host from the generated tokens, and the update is a fixed
sequence of kernels; so a run resumed from a checkpoint ends bitwise equal to an
uninterrupted one, and theta_t can be replayed from theta_0 and `es_log.jsonl` (`replay`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esawd import memplan, sampling, scoring
from esawd import mesh as mesh_lib
from esawd.es.anchor import HostAnchor, host_anchor, host_value
from esawd.es.noise import iteration_seeds
from esawd.es.population import compile_population, evaluate_population
from esawd.es.reference import reference_step
from esawd.es.update import es_step, normalize_rewards
from esawd.loop import Context
from esawd.memplan import (  # noqa: F401 (the names the tests and docs use here)
    host_memory_bytes,
    member_bytes,
    members_per_batch_for,
    perturbation_elements,
)
from esawd.types import Params

# ---------------------------------------------------------------------------------------
# Population fitness: generation on device, scoring on the host, overlapped.
# ---------------------------------------------------------------------------------------


def make_generate_fn(
    config, prompt_ids, prompt_mask, *, max_new_tokens: int, ignore_eos: bool = False,
    fuse_layers: bool = True,
) -> Callable:  # fmt: skip
    """fitness(params, key) -> (tokens [B, T], lengths [B]): greedy generation on the prompts.

    The prompts are the same at every call, so they are padded only to the longest of them
    (bucket=1): one compilation either way, and no prefill work or cache slots spent on a
    wider bucket (Countdown's 139-145-token prompts would otherwise be padded to 192).
    fuse_layers=False for weights split over a `model` mesh axis (`sampling.generate`).
    """
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)

    def generate(params, key):
        del key  # greedy decoding, as in the paper
        return sampling.generate(
            config, params, ids, mask, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
            bucket=1, fuse_layers=fuse_layers,
        )  # fmt: skip

    return generate


def make_population_generate_fn(
    config, prompt_ids, prompt_mask, *, max_new_tokens: int, ignore_eos: bool = False,
    fuse_layers: bool = True,
) -> Callable:  # fmt: skip
    """The factored fitness(params, perturbations, keys) -> (tokens [M, B, T], lengths [M, B]):
    M members' greedy generations on the prompts as one batch over the shared weights."""
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)

    def generate(params, perturbations, keys):
        del keys  # greedy decoding, as in the paper
        return sampling.generate(
            config, params, ids, mask, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
            bucket=1, perturbation=perturbations, fuse_layers=fuse_layers,
        )  # fmt: skip

    return generate


def population_fitness(
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
    rank: int = 0,
) -> dict[str, np.ndarray]:
    """Per-member mean scores, [N] or [2, K]; each group is scored while the next generates.

    rank >= 1: `generate_fn` is factored (`make_population_generate_fn`); each device
    generates `members_per_batch` members as one batch over the shared weights.

    Also returns `score_seconds`: host decoding + reward time, overlapped with generation.
    """
    width = mesh.shape["pop"] * members_per_batch
    per_group = max(1, width // 2) if antithetic else width
    groups = [seeds[i : i + per_group] for i in range(0, len(seeds), per_group)]
    results: list[dict] = []
    score_seconds: list[float] = []
    pending = None

    def finish(out):
        tokens, lengths = (host_value(x) for x in out)  # blocks on this group only
        lead = tokens.shape[:-2]  # [2, g] or [g]
        flat_t = tokens.reshape(-1, *tokens.shape[-2:])
        flat_l = lengths.reshape(-1, lengths.shape[-1])
        t0 = time.perf_counter()
        rows = [score_fn(t, n) for t, n in zip(flat_t, flat_l, strict=True)]
        score_seconds.append(time.perf_counter() - t0)
        results.append({k: np.array([r[k].mean() for r in rows]).reshape(lead) for k in rows[0]})

    for group in groups:
        out = evaluate_population(
            generate_fn,
            params,
            group,
            sigma=sigma,
            antithetic=antithetic,
            mesh=mesh,
            members_per_batch=members_per_batch,
            noise_sharing=noise_sharing,
            rank=rank,
            factored=rank > 0,
        )  # dispatched asynchronously
        if pending is not None:
            finish(pending)
        pending = out
    finish(pending)
    out = {k: np.concatenate([r[k] for r in results], axis=-1) for k in results[0]}
    out["score_seconds"] = np.float64(sum(score_seconds))  # host time, overlapped
    return out


# ---------------------------------------------------------------------------------------
# Replay.
# ---------------------------------------------------------------------------------------


def replay(
    theta0: Params,
    es_rows: Sequence[dict[str, Any]],
    *,
    upto: int,
    anchor: HostAnchor | None = None,
    start: tuple[int, Params] | None = None,
) -> Params:
    """theta_t for t = `upto`, rebuilt from theta_0 and the logged seeds and coefficients.

    `start=(s, theta_s)` continues from a known theta_s (a checkpoint, or an earlier replay)
    instead of from theta_0; the anchor is theta_0 either way. The given trees are not changed.
    """
    anchor = host_anchor(theta0) if anchor is None else anchor
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
        params, _ = apply_update(
            params,
            anchor,
            np.asarray(row["seeds"], np.uint32),
            np.asarray(row["coeffs"], np.float32),
            row,
        )
        done = row["iteration"]
    if done != upto:
        raise ValueError(f"es_log ends at iteration {done}; cannot replay iteration {upto}.")
    return params


# The es_step settings each es_log.jsonl row records beside its seeds and coefficients.
ES_LOG_KEYS = ("alpha", "population_size", "lam", "kind", "noise_sharing", "noise_rank")
# Recorded too when es.precision="reference_float16": what the reference's residue needs.
REFERENCE_LOG_KEYS = ("sigma", "antithetic", "reference_engines")


def es_log_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `es_step` recorded in an es_log row (rows written before low
    rank existed have no noise_rank: full rank)."""
    kw = {k: row[k] for k in ES_LOG_KEYS if k != "noise_rank"}
    return {**kw, "rank": int(row.get("noise_rank", 0))}


def es_log_row(e, awd) -> dict[str, Any]:
    """The update settings an es_log row records, from the run's `es` and `awd` settings."""
    row = {
        "alpha": e.alpha, "population_size": e.population_size, "lam": awd.lam,
        "kind": awd.kind, "noise_sharing": e.noise_sharing, "noise_rank": e.noise_rank,
        "precision": e.precision,
    }  # fmt: skip
    if e.precision == "reference_float16":
        row.update(sigma=e.sigma, antithetic=e.antithetic, reference_engines=e.reference_engines)
    return row


def apply_update(
    params: Params, anchor, seeds, coeffs, row: dict[str, Any], *, with_drift: bool = False
) -> tuple[Params, dict[str, float]]:
    """The update an es_log row describes: the fused float32 `es_step`, or the reference's
    float16 in-place dynamics (`es.reference`) for rows with precision="reference_float16"
    (rows written before the switch existed have no precision: float32)."""
    kw = es_log_settings(row)
    if row.get("precision", "float32") == "reference_float16":
        del kw["rank"]  # full rank only, as the reference
        return reference_step(
            params, anchor, seeds, coeffs, sigma=row["sigma"], antithetic=row["antithetic"],
            engines=row["reference_engines"], **kw,
        )  # fmt: skip
    return es_step(params, anchor, seeds, coeffs, **kw, with_drift=with_drift)


# ---------------------------------------------------------------------------------------
# The method's parts for the shared loop.
# ---------------------------------------------------------------------------------------


class ESMethod:
    """ES + AWD: the state is theta_t, replicated over the `pop` mesh axis and split over the
    `model` axis (esawd.mesh); theta_0 lives in host memory (`HostAnchor`) and is streamed
    into each update, slice by slice."""

    label, unit = "ES", "it"

    def __init__(self, s):
        self.es, self.awd, self.s = s.es, s.awd, s
        self.num_steps = s.es.num_iterations
        self.seed_meta, self.data_seed = {"es_seed": s.es.seed}, s.es.seed
        # es.precision="reference_float16": the reference's engines hold float16 weights
        self.masters_dtype = "float16" if s.es.precision == "reference_float16" else "float32"
        n = s.es.population_size
        self.num_seeds = n // 2 if s.es.antithetic else n

    def plan(self, ctx: Context) -> memplan.MemoryPlan:
        """The run's memory plan (`esawd.memplan.es_plan`), before any weight is loaded; it
        also fixes the members generated together per device (es.members_per_batch=0)."""
        e = self.es
        self.memory = memplan.es_plan(
            ctx.config, prompts=len(ctx.train_examples), width=ctx.prompts.width,
            max_new_tokens=self.s.task.max_new_tokens, population_size=e.population_size,
            devices=e.num_devices or jax.device_count(), model_axis=e.model_axis,
            rank=e.noise_rank, members_per_batch=e.members_per_batch,
            masters_dtype=self.masters_dtype,
        )  # fmt: skip
        return self.memory

    def init(self, ctx: Context, model, theta0: Params) -> dict[str, Any]:
        s, config = self.s, ctx.config
        self.mesh = mesh_lib.run_mesh(
            jax.devices()[: s.es.num_devices or None], model_axis=s.es.model_axis
        )
        rank = s.es.noise_rank
        make = make_population_generate_fn if rank else make_generate_fn
        self.generate_fn = make(
            config, ctx.prompts.ids, ctx.prompts.mask, max_new_tokens=s.task.max_new_tokens,
            fuse_layers=s.es.model_axis == 1,
        )  # fmt: skip
        # Full rank: one member at a time unless set. Each member brings its own weights, so
        # batching saves no weight reads; vmapped generation measured no faster
        # (docs/benchmarks.md). Low rank: as many as fit in a device (the plan).
        memory = getattr(self, "memory", None) or self.plan(ctx)
        self.per_batch = memory.members_per_batch

        def score_fn(tokens, lengths):
            return scoring.score(ctx.task, ctx.tokenizer, tokens, lengths, ctx.train_examples)

        self.score_fn = score_fn
        self.anchor = host_anchor(theta0)
        # replicated over `pop`, split over `model` (esawd.mesh)
        return {"params": mesh_lib.shard_params(model.params, self.mesh, config=ctx.config)}

    def compile(self, ctx: Context, state: dict) -> float:
        """Compile (not run) one group's generation, as the first iteration would; seconds."""
        e = self.es
        seeds = np.arange(self.mesh.shape["pop"] * self.per_batch, dtype=np.uint32)
        t0 = time.perf_counter()
        compile_population(
            self.generate_fn, state["params"], seeds[: max(1, len(seeds) // 2)]
            if e.antithetic else seeds, sigma=e.sigma, antithetic=e.antithetic, mesh=self.mesh,
            members_per_batch=self.per_batch, noise_sharing=e.noise_sharing, rank=e.noise_rank,
            factored=e.noise_rank > 0,
        )  # fmt: skip
        return time.perf_counter() - t0

    def step(self, ctx: Context, state: dict, t: int) -> tuple[dict, dict[str, Any]]:
        e, run = self.es, ctx.run
        t_iter = time.perf_counter()
        seeds = np.asarray(
            iteration_seeds(base_seed=e.seed, iteration=t, population_size=self.num_seeds)
        )
        member = population_fitness(
            self.generate_fn, state["params"], seeds, self.score_fn, sigma=e.sigma,
            antithetic=e.antithetic, mesh=self.mesh, members_per_batch=self.per_batch,
            noise_sharing=e.noise_sharing, rank=e.noise_rank,
        )  # fmt: skip
        t_pop = time.perf_counter()
        if not np.all(np.isfinite(member["reward"])):
            raise FloatingPointError(
                f"iteration {t}: non-finite rewards {member['reward']}; the last good "
                f"checkpoint ({run.latest_step()}) is intact."
            )
        coeffs = normalize_rewards(member["reward"], antithetic=e.antithetic)
        row = es_log_row(e, self.awd)
        params, upd = apply_update(
            state["params"], self.anchor, seeds, coeffs, row, with_drift=True
        )
        t_update = time.perf_counter()
        if not math.isfinite(upd["drift_norm"]):  # a NaN or Inf anywhere makes it non-finite
            raise FloatingPointError(
                f"iteration {t}: the update produced non-finite parameters; the last good "
                f"checkpoint ({run.latest_step()}) is intact."
            )
        if ctx.primary:
            run.es_log.append(
                {"iteration": t, "seeds": seeds.tolist(), "coeffs": [float(c) for c in coeffs],
                 **row}
            )  # fmt: skip
        metrics = {
            **scoring.reward_metrics(member),
            "drift_norm": upd["drift_norm"],
            "time/population": t_pop - t_iter,  # perturb + generate (device) + score (host)
            "time/score": float(member["score_seconds"]),  # host part, overlapped
            "time/update": t_update - t_pop,  # fused ES + AWD step
        }
        return {"params": params}, metrics

    def postfix(self, metrics: dict[str, Any]) -> dict[str, str]:
        return {"reward": f"{metrics['reward_mean']:.3f}", "acc": f"{metrics['accuracy']:.2f}"}
