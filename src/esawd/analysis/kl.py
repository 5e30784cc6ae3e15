"""KL(base || tuned) on the base model's own samples (paper Sec. 5): one continuation per
prompt sampled from theta_0 at temperature 1, scored under theta_0 and theta_t; `kl` is the
token-weighted k1 estimate sum(log p0 - log pt) / tokens, `kl_prompt_avg` the mean over
prompts of each prompt's per-token average. These are the reference's
`token_weighted_kl_divergence` (the one its KL figure plots) and
`prompt_averaged_kl_divergence` (evaluation/evaluate_kl_divergence.py), and per prompt the summed
difference and its tokens (`prompt_sums`, `prompt_tokens`: `stats.kl_interval` resamples the
prompts for a bootstrap interval of `kl`); continuation lengths
count the stop token, as vLLM's do, so no prompt has an empty one. Which prompts:
`forgetting.kl_examples`.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from esawd import es, sampling, scoring


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
    lp = sampling.sequence_log_probs(
        config, params, samples.ids[b], samples.mask[b], samples.tokens[b], samples.cont_mask(b)
    )
    return np.asarray(es.host_value(lp))


def sample_base(
    config, theta0, tokenizer, task, examples, *, max_new_tokens: int, seed: int, batch_size: int
) -> KLSamples:
    """One continuation per prompt from theta_0 at temperature 1, with its base log-probs."""
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(task.name.encode()))
    out = KLSamples([], [], [], [], [])
    for b, i in enumerate(range(0, len(examples), batch_size)):
        batch = scoring.encode(task, examples[i : i + batch_size], tokenizer)
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
    per_prompt, sums, counts = [], [], []
    for b, lp in enumerate(logp):
        mask = samples.cont_mask(b)
        d = np.where(mask, samples.base_logp[b].astype(np.float64) - lp.astype(np.float64), 0.0)
        row_sum = d.sum(axis=1)
        n = mask.sum(axis=1)
        diff_sum += float(row_sum.sum())
        tokens += int(n.sum())
        per_prompt += [float(s / k) for s, k in zip(row_sum, n, strict=True) if k > 0]
        sums += [float(s) for s, k in zip(row_sum, n, strict=True) if k > 0]
        counts += [int(k) for k in n if k > 0]
    return {
        "kl": diff_sum / tokens if tokens else 0.0,
        "kl_prompt_avg": float(np.mean(per_prompt)) if per_prompt else 0.0,
        "num_tokens": tokens,
        "num_prompts": sum(len(x) for x in samples.lengths),
        # per prompt: summed log p0 - log pt and its tokens, for `stats.kl_interval`
        "prompt_sums": sums,
        "prompt_tokens": counts,
    }
