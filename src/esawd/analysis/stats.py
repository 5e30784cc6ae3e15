"""Confidence intervals for accuracies measured on a fixed set of examples.

- `wilson_interval(k, n)`: Wilson's score interval for one proportion (Wilson 1927); unlike
  the normal approximation it stays inside [0, 1] and is not degenerate at 0 or n correct.
- `paired_difference(before, after)`: the change in accuracy between two models scored on the
  same examples, with Newcombe's hybrid score interval for a difference of paired proportions
  (Newcombe 1998, "Improved confidence intervals for the difference between binomial
  proportions based on paired data", method 10: Wilson intervals of both proportions combined
  with the phi correlation of the pairs, no continuity correction), and McNemar's exact
  two-sided p-value (the binomial test on the discordant pairs).

- `examples_needed(change, discordant)` / `mcnemar_power(n, change, discordant)`: how many
  paired examples McNemar's test needs to detect a change in accuracy, given the share of
  examples expected to flip (Connor 1987, "Sample size for testing differences in proportions
  for the paired-sample design"), for sizing an experiment before running it.

- `kl_interval(prompt_sums, prompt_tokens)`: a bootstrap interval of the token-weighted KL
  estimate sum(sums) / sum(tokens), resampling prompts (`scipy.stats.bootstrap`, paired,
  percentile method): the prompts are the sampling unit, their tokens are not independent.

Pairing matters: the same held-out examples are scored at the start and at the end, so most
examples agree and the change is far less noisy than two independent accuracies would be.
Wilson's interval and McNemar's exact test are scipy's (`scipy.stats.binomtest`); Newcombe's
paired interval and Connor's sample size are not in scipy and are written out here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(k: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for k successes out of n (default: 95 %)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    confidence = 1.0 - 2.0 * sps.norm.sf(z)
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for b and c discordant pairs (binomial, p = 1/2)."""
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(min(b, c), b + c, 0.5).pvalue)


def examples_needed(
    change: float, discordant: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Paired examples McNemar's test needs to detect an accuracy change of `change` (e.g.
    0.03) with probability `power` at level `alpha`, when a share `discordant` of the examples
    flips between the two models (Connor 1987, normal approximation)."""
    _check_design(change, discordant)
    za, zb = sps.norm.isf(alpha / 2), sps.norm.isf(1 - power)
    root = za * math.sqrt(discordant) + zb * math.sqrt(discordant - change**2)
    return math.ceil(root**2 / change**2)


def mcnemar_power(n: int, change: float, discordant: float, *, alpha: float = 0.05) -> float:
    """The probability that McNemar's test on `n` paired examples detects a change of
    `change` when a share `discordant` of them flips (Connor 1987; the inverse of
    `examples_needed`)."""
    _check_design(change, discordant)
    za = sps.norm.isf(alpha / 2)
    z = (abs(change) * math.sqrt(n) - za * math.sqrt(discordant)) / math.sqrt(
        discordant - change**2
    )
    return float(sps.norm.cdf(z))


def _check_design(change: float, discordant: float) -> None:
    if not (0 < abs(change) < discordant <= 1):
        raise ValueError(
            f"need 0 < |change| < discordant <= 1 (a change comes from flipped examples), got "
            f"change={change}, discordant={discordant}"
        )


def paired_difference(
    before: Sequence[int | bool], after: Sequence[int | bool], *, z: float = Z95
) -> dict[str, Any]:
    """Accuracy before and after on the same examples, the change with its interval.

    Returns {n, before, after, before_ci, after_ci, diff, diff_ci, gained, lost, changed,
    changed_ci, p_mcnemar}: `gained` examples went wrong -> right, `lost` right -> wrong,
    `changed` is their share (gained + lost) / n with its Wilson interval: how many answers
    moved at all, which an undirected change raises even when it leaves accuracy level."""
    x = np.asarray(before, bool)
    y = np.asarray(after, bool)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"before and after must be two equally long non-empty 0/1 sequences of the same "
            f"examples, got shapes {x.shape} and {y.shape}"
        )
    n = x.size
    a = int(np.sum(x & y))  # right both times
    lost = int(np.sum(x & ~y))
    gained = int(np.sum(~x & y))
    d = n - a - lost - gained  # wrong both times
    p1, p2 = (a + lost) / n, (a + gained) / n
    l1, u1 = wilson_interval(a + lost, n, z=z)
    l2, u2 = wilson_interval(a + gained, n, z=z)
    denom = (a + lost) * (gained + d) * (a + gained) * (lost + d)
    phi = (a * d - lost * gained) / math.sqrt(denom) if denom > 0 else 0.0
    diff = p2 - p1
    lower = diff - math.sqrt(
        max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    )
    upper = diff + math.sqrt(
        max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2)
    )
    return {
        "n": n,
        "before": p1,
        "after": p2,
        "before_ci": (l1, u1),
        "after_ci": (l2, u2),
        "diff": diff,
        "diff_ci": (max(-1.0, lower), min(1.0, upper)),
        "gained": gained,
        "lost": lost,
        "changed": (gained + lost) / n,
        "changed_ci": wilson_interval(gained + lost, n, z=z),
        "p_mcnemar": mcnemar_p(lost, gained),
    }


def kl_interval(
    prompt_sums: Sequence[float],
    prompt_tokens: Sequence[int],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the token-weighted KL estimate
    sum(prompt_sums) / sum(prompt_tokens) (`analysis.kl_divergence`'s `kl`), resampling
    whole prompts with their token counts (scipy.stats.bootstrap, paired); seeded, so the
    same rows give the same interval."""
    x = np.asarray(prompt_sums, float)
    n = np.asarray(prompt_tokens, float)
    if x.shape != n.shape or x.ndim != 1 or x.size < 2 or np.any(n <= 0):
        raise ValueError(
            "prompt_sums and prompt_tokens must be equally long, with at least two prompts "
            f"and positive token counts; got shapes {x.shape} and {n.shape}"
        )

    def ratio(sums, tokens, axis=-1):
        return np.sum(sums, axis=axis) / np.sum(tokens, axis=axis)

    res = sps.bootstrap(
        (x, n), ratio, paired=True, vectorized=True, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
