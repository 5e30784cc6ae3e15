"""GRPO, the paper's gradient baseline, on the same models, sampler, tasks and run directory.

Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", Sec. 4.1), as
Schweighofer et al. (2026) run it against ES: for each prompt a group of n completions is
sampled at temperature 1, rewarded by the task, and given the group-normalised advantage

    A_i = (r_i - mean_group r) / (std_group r + eps)        (std with Bessel's correction)

Each mini-batch of prompts then takes one AdamW step on the clipped policy-ratio objective
(PPO, Schulman et al. 2017) with a KL penalty to the reference model theta_0 (the anchor),
averaged over every completion token of the mini-batch (token-level averaging, as verl's
"token-mean" and DAPO, Yu et al. 2025):

    rho = exp(log pi - log pi_old)
    k3  = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1    (Schulman 2020, "k3")
    L   = sum_tokens [ -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta k3 ] / #tokens

Gradients are taken with the same Flax decoder as everything else (float32 masters, the
forward pass in the configured compute dtype) and accumulated over micro-batches of
sequences, so memory is bounded by the micro-batch while the step is the mini-batch's.

Determinism. The sampling key of step t is fold_in(key(seed), t) and every kernel sequence is
fixed, so a run resumed from a checkpoint (parameters and optimizer state) ends bitwise equal
to an uninterrupted one on the same machine.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from esawd import memplan, models, sampling, scoring
from esawd import mesh as mesh_lib
from esawd.loop import Context
from esawd.types import Params, PRNGKey

# ---------------------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------------------

# Log-ratios are clamped to +-20 before exp (as verl does): a token whose probability moved
# by more than e^20 would otherwise give inf, and 0 * inf = NaN in a masked gradient.
LOG_RATIO_CLAMP = 20.0


def group_advantages(rewards: jax.Array | np.ndarray, *, eps: float = 1e-6) -> jax.Array:
    """Group-normalised advantages [P, n] of rewards [P, n] (std with Bessel's correction)."""
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, group >= 2], got shape {r.shape}")
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True)
    return (r - mean) / (std + eps)


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """The k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1, d = ref_logp - logp."""
    d = jnp.clip(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.expm1(d) - d  # expm1: exp(d) - 1 cancels badly in float32 for small d


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float,
    kl_coef: float,
    num_tokens: jax.Array | float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped GRPO loss with k3 KL, summed over tokens [B, C] and divided by num_tokens.

    num_tokens is the token count of the whole mini-batch, so micro-batch losses (and their
    gradients) add up to the mini-batch's token-level average. Also returns token sums
    (`pg`, `kl`, `clipped`, `ratio`, `tokens`) for the metrics.
    """
    mask = mask.astype(bool)
    adv = advantages[:, None]  # [B, 1]: one advantage per completion
    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, C]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg = jnp.maximum(unclipped, clipped)  # = -min(rho A, clip(rho) A)
    kl = k3_kl(logp, ref_logp)
    per_token = jnp.where(mask, pg + kl_coef * kl, 0.0)
    loss = per_token.sum() / num_tokens
    zero = jnp.zeros_like(ratio)
    aux = {
        "pg": jnp.where(mask, pg, zero).sum(),
        "kl": jnp.where(mask, kl, zero).sum(),
        "clipped": jnp.where(mask & (clipped > unclipped), 1.0, 0.0).sum(),
        "ratio": jnp.where(mask, ratio, zero).sum(),
        "tokens": mask.sum().astype(jnp.float32),
    }
    return loss, aux


@functools.partial(jax.jit, static_argnames="config", donate_argnums=3)
def _accumulate_grad(
    config, params, ref_params, acc, prompt_ids, prompt_mask, tokens, mask, adv, old_logp,
    num_tokens, clip_eps, kl_coef,
):  # fmt: skip
    """acc + the gradient of one micro-batch's share of the mini-batch loss, and its sums."""

    def loss_fn(p):
        logp = sampling.token_log_probs(config, p, prompt_ids, prompt_mask, tokens, mask)
        ref = jax.lax.stop_gradient(
            sampling.token_log_probs(config, ref_params, prompt_ids, prompt_mask, tokens, mask)
        )
        # On-policy (first mini-batch of a step): pi_old is the current policy itself.
        old = jax.lax.stop_gradient(logp) if old_logp is None else old_logp
        return policy_loss(
            logp, old, ref, adv, mask, clip_eps=clip_eps, kl_coef=kl_coef, num_tokens=num_tokens
        )

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return jax.tree.map(jnp.add, acc, grads), loss, aux


# ---------------------------------------------------------------------------------------
# Rollouts and the update.
# ---------------------------------------------------------------------------------------


class Rollout(NamedTuple):
    """Sequences of one step, prompt-major (row p*n + j is completion j of prompt p)."""

    prompt_ids: np.ndarray  # [S, T] left-padded
    prompt_mask: np.ndarray  # [S, T]
    tokens: np.ndarray  # [S, C] completion tokens, right-padded
    mask: np.ndarray  # [S, C] True on real completion tokens
    advantages: np.ndarray  # [S]

    def take(self, rows: np.ndarray, valid: np.ndarray) -> Rollout:
        """The rows `rows`; rows where `valid` is False are padding (no tokens, no advantage)."""
        return Rollout(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.tokens[rows],
            self.mask[rows] & valid[:, None],
            np.where(valid, self.advantages[rows], 0.0).astype(np.float32),
        )


def _padded_chunks(rows: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`rows` in chunks of exactly `size` (the last padded by repeating a row, marked invalid)."""
    out = []
    for i in range(0, len(rows), size):
        part = rows[i : i + size]
        valid = np.arange(size) < len(part)
        out.append((np.resize(part, size) if len(part) < size else part, valid))
    return out


def rollout(
    config: models.ModelConfig,
    params: Params,
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    key: PRNGKey,
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 256,
    ignore_eos: bool = False,
    fuse_layers: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """n sampled completions per prompt [P, T]: tokens [P*n, max_new_tokens], lengths [P*n].

    Sequences are generated `batch_size` at a time (the last call padded to the same shape);
    call b samples with fold_in(key, b). fuse_layers=False for weights split over a `model`
    mesh axis (`sampling.generate`).
    """
    ids = np.repeat(np.asarray(prompt_ids), group_size, axis=0)  # [P*n, T]
    mask = np.repeat(np.asarray(prompt_mask), group_size, axis=0)
    batch_size = min(batch_size, len(ids))
    tokens, lengths = [], []
    for b, (rows, valid) in enumerate(_padded_chunks(np.arange(len(ids)), batch_size)):
        t, n = sampling.generate(
            config, params, ids[rows], mask[rows], max_new_tokens=max_new_tokens,
            temperature=temperature, key=jax.random.fold_in(key, b), ignore_eos=ignore_eos,
            fuse_layers=fuse_layers,
        )  # fmt: skip
        t, n = jax.device_get((t, n))
        tokens.append(t[valid])
        lengths.append(n[valid])
    return np.concatenate(tokens), np.concatenate(lengths)


def make_optimizer(
    *,
    learning_rate: float,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Global-norm clipping (skipped when max_grad_norm is 0), then AdamW."""
    adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)
    return adamw


def make_apply_fn(optimizer: optax.GradientTransformation):
    """apply(params, opt_state, grads) -> (params, opt_state, grad_norm), jitted and donated."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def apply(params, opt_state, grads):
        norm = optax.tree.norm(grads)  # before clipping
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, norm

    return apply


def old_log_probs(
    config: models.ModelConfig,
    params: Params,
    batch: Rollout,
    rows: np.ndarray,
    *,
    micro_batch_size: int,
) -> np.ndarray:
    """log pi_old [len(rows), C] of the given rows, computed `micro_batch_size` at a time."""
    out = []
    for idx, valid in _padded_chunks(rows, micro_batch_size):
        mb = batch.take(idx, valid)
        lp = sampling.log_probs_jit(
            config, params, mb.prompt_ids, mb.prompt_mask, mb.tokens, mb.mask
        )
        out.append(np.asarray(lp)[valid])
    return np.concatenate(out)


def update(
    config: models.ModelConfig,
    params: Params,
    opt_state: Any,
    ref_params: Params,
    batch: Rollout,
    *,
    apply_fn,
    mini_batch_rows: int,
    micro_batch_size: int,
    clip_eps: float,
    kl_coef: float,
) -> tuple[Params, Any, dict[str, float]]:
    """One GRPO step on a rollout: an AdamW update per mini-batch of `mini_batch_rows` rows.

    The first mini-batch is on-policy (pi_old = the current policy); log pi_old of the later
    ones is computed before any update. Gradients are accumulated over micro-batches.
    """
    rows = np.arange(len(batch.tokens))
    minis = [rows[i : i + mini_batch_rows] for i in range(0, len(rows), mini_batch_rows)]
    t0 = time.perf_counter()
    old = None
    if len(minis) > 1:  # pi_old of the later mini-batches, before the first update
        old = np.zeros(batch.tokens.shape, np.float32)
        old[minis[1][0] :] = old_log_probs(
            config, params, batch, rows[minis[1][0] :], micro_batch_size=micro_batch_size
        )
    t_old = time.perf_counter() - t0
    sums = {"loss": 0.0, "pg": 0.0, "kl": 0.0, "clipped": 0.0, "ratio": 0.0, "tokens": 0.0}
    norms = []
    for m, mini in enumerate(minis):
        num_tokens = jnp.float32(max(int(batch.mask[mini].sum()), 1))
        acc = jax.tree.map(jnp.zeros_like, params)
        for idx, valid in _padded_chunks(mini, micro_batch_size):
            mb = batch.take(idx, valid)
            mb_old = None if m == 0 else np.where(mb.mask, old[idx], 0.0).astype(np.float32)
            acc, loss, aux = _accumulate_grad(
                config, params, ref_params, acc, mb.prompt_ids, mb.prompt_mask, mb.tokens,
                mb.mask, mb.advantages, mb_old, num_tokens, jnp.float32(clip_eps),
                jnp.float32(kl_coef),
            )  # fmt: skip
            sums["loss"] += float(loss) / len(minis)
            for k, v in aux.items():
                sums[k] += float(v)
        params, opt_state, norm = apply_fn(params, opt_state, acc)
        norms.append(float(norm))
    tokens = max(sums["tokens"], 1.0)
    metrics = {
        "loss": sums["loss"],  # mean over mini-batches of the token-level loss
        "pg_loss": sums["pg"] / tokens,
        "kl": sums["kl"] / tokens,  # k3, token mean, against theta_0
        "clip_fraction": sums["clipped"] / tokens,
        "ratio_mean": sums["ratio"] / tokens,
        "grad_norm": float(np.mean(norms)),  # before clipping, mean over mini-batches
        "num_updates": len(minis),
        "time/old_logp": t_old,
    }
    return params, opt_state, metrics


@jax.jit
def _drift_norm(params, anchor):
    sq = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params, anchor)
    return jnp.sqrt(sum(jax.tree.leaves(sq)))


def drift_norm(params: Params, anchor: Params) -> float:
    """||theta - theta_0|| over every parameter (float32, on device)."""
    return float(_drift_norm(params, anchor))


def step_prompts(num_train: int, *, prompts_per_step: int, seed: int, step: int) -> np.ndarray:
    """Indices of the training prompts of step `step`: a seeded draw without replacement."""
    return np.random.default_rng([seed, step]).permutation(num_train)[:prompts_per_step]


# ---------------------------------------------------------------------------------------
# The method's parts for the shared loop.
# ---------------------------------------------------------------------------------------


def reward_metrics(scores: dict[str, np.ndarray], group_size: int) -> dict[str, float]:
    """`scoring.reward_metrics` and the fraction of groups whose rewards are all equal (zero
    advantage: no learning signal)."""
    r = scores["reward"]
    zero_std = float((r.reshape(-1, group_size).std(axis=1) == 0).mean())
    return {**scoring.reward_metrics(scores), "zero_std_groups": zero_std}


class GRPOMethod:
    """GRPO: the state is theta_t and AdamW's moments; theta_0 (the KL reference) stays on the
    devices. One process; the model, its moments and its sampling split tensor-parallel over
    `grpo.model_axis` devices (esawd.mesh), one device by default."""

    label, unit, masters_dtype = "GRPO", "st", "float32"

    def __init__(self, s):
        self.g, self.s = s.grpo, s
        self.num_steps = s.grpo.num_steps
        self.seed_meta, self.data_seed = {"grpo_seed": s.grpo.seed}, s.grpo.seed
        g = s.grpo
        self.optimizer = make_optimizer(
            learning_rate=g.learning_rate, weight_decay=g.weight_decay,
            max_grad_norm=g.max_grad_norm, b1=g.adam_b1, b2=g.adam_b2, eps=g.adam_eps,
        )  # fmt: skip
        self.apply_fn = make_apply_fn(self.optimizer)
        self.root_key = jax.random.key(g.seed)

    def plan(self, ctx: Context) -> memplan.MemoryPlan:
        """The run's memory plan (`esawd.memplan.grpo_plan`), before any weight is loaded."""
        g = self.g
        rows = g.prompts_per_step * g.group_size
        return memplan.grpo_plan(
            ctx.config, generate_batch=min(g.generate_batch_size, rows),
            micro_batch=g.micro_batch_size, width=ctx.prompts.width,
            max_new_tokens=self.s.task.max_new_tokens, model_axis=g.model_axis,
        )  # fmt: skip

    def init(self, ctx: Context, model: models.Model, theta0: Params) -> dict[str, Any]:
        m = self.g.model_axis
        self.mesh = mesh_lib.run_mesh(jax.devices()[:m], model_axis=m)  # one "pop" row
        self.ref_params = mesh_lib.shard_params(theta0, self.mesh, config=ctx.config)
        params = mesh_lib.shard_params(model.params, self.mesh, config=ctx.config)
        # jitted, so AdamW's moments are split like the parameters they follow
        return {"params": params, "opt_state": jax.jit(self.optimizer.init)(params)}

    def _rollout(self, ctx: Context, params: Params, idx: np.ndarray, key: PRNGKey):
        g, prompts = self.g, ctx.prompts
        return rollout(
            ctx.config, params, prompts.ids[idx], prompts.mask[idx], key,
            group_size=g.group_size, max_new_tokens=self.s.task.max_new_tokens,
            temperature=g.temperature, batch_size=g.generate_batch_size,
            fuse_layers=g.model_axis == 1,
        )  # fmt: skip

    def compile(self, ctx: Context, state: dict) -> float:
        """Compile (not run) the first sampling batch of step 1's rollout; seconds."""
        g, prompts = self.g, ctx.prompts
        idx = step_prompts(len(ctx.train_examples), prompts_per_step=g.prompts_per_step,
                           seed=g.seed, step=1)  # fmt: skip
        b = min(g.generate_batch_size, len(idx) * g.group_size)
        ids = np.repeat(prompts.ids[idx], g.group_size, axis=0)[:b]
        mask = np.repeat(prompts.mask[idx], g.group_size, axis=0)[:b]

        def first_batch(params):
            return sampling.generate(
                ctx.config, params, ids, mask, max_new_tokens=self.s.task.max_new_tokens,
                temperature=g.temperature, key=jax.random.key(0), fuse_layers=g.model_axis == 1,
            )  # fmt: skip

        t0 = time.perf_counter()
        jax.jit(first_batch).lower(state["params"]).compile()
        return time.perf_counter() - t0

    def step(self, ctx: Context, state: dict, t: int) -> tuple[dict, dict[str, Any]]:
        g, prompts = self.g, ctx.prompts
        t_step = time.perf_counter()
        idx = step_prompts(len(ctx.train_examples), prompts_per_step=g.prompts_per_step,
                           seed=g.seed, step=t)  # fmt: skip
        tokens, lengths = self._rollout(
            ctx, state["params"], idx, jax.random.fold_in(self.root_key, t)
        )
        t_rollout = time.perf_counter()
        examples = [ctx.train_examples[i] for i in idx for _ in range(g.group_size)]
        scores = scoring.score(ctx.task, ctx.tokenizer, tokens, lengths, examples)
        t_score = time.perf_counter()
        if not np.all(np.isfinite(scores["reward"])):
            raise FloatingPointError(
                f"step {t}: non-finite rewards; the last good checkpoint "
                f"({ctx.run.latest_step()}) is intact."
            )
        adv = group_advantages(scores["reward"].reshape(-1, g.group_size), eps=g.adv_eps)
        # Completions are scored up to the longest one (rounded to 64 tokens to bound the
        # number of compiled shapes), not the full max_new_tokens.
        width = min(tokens.shape[1], -(-int(lengths.max()) // 64) * 64)
        batch = Rollout(
            np.repeat(prompts.ids[idx], g.group_size, axis=0),
            np.repeat(prompts.mask[idx], g.group_size, axis=0),
            tokens[:, :width],
            np.arange(width)[None, :] < lengths[:, None],
            np.asarray(adv, np.float32).reshape(-1),
        )
        params, opt_state, upd = update(
            ctx.config, state["params"], state["opt_state"], self.ref_params, batch,
            apply_fn=self.apply_fn, mini_batch_rows=g.mini_batch_size * g.group_size,
            micro_batch_size=g.micro_batch_size, clip_eps=g.clip_eps, kl_coef=g.kl_coef,
        )  # fmt: skip
        finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))
        t_update = time.perf_counter()
        if not finite:
            raise FloatingPointError(
                f"step {t}: the update produced non-finite parameters; the last good "
                f"checkpoint ({ctx.run.latest_step()}) is intact."
            )
        metrics = {
            **upd,
            **reward_metrics(scores, g.group_size),
            "drift_norm": drift_norm(params, self.ref_params),
            "time/rollout": t_rollout - t_step,  # sampling n completions per prompt
            "time/score": t_score - t_rollout,  # host decoding + rewards
            "time/update": t_update - t_score,  # pi_old, gradients, AdamW
        }
        return {"params": params, "opt_state": opt_state}, metrics

    def postfix(self, metrics: dict[str, Any]) -> dict[str, str]:
        return {"reward": f"{metrics['reward_mean']:.3f}", "kl": f"{metrics['kl']:.2e}"}
