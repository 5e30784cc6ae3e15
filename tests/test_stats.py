"""esawd.analysis.stats: Wilson intervals (published values), McNemar's exact test, and the
paired-difference interval (its definition's edge cases and its coverage by simulation)."""

import math

import numpy as np
import pytest

from esawd.analysis import stats


def test_wilson_matches_published_values():
    # Newcombe (1998, "Two-sided confidence intervals for the single proportion"), Table I:
    # 81/263 -> 0.2553, 0.3662; 0/20 -> 0, 0.1611; 1/29 -> 0.0061, 0.1718.
    for (k, n), expected in {
        (81, 263): (0.2553, 0.3662),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }.items():
        assert stats.wilson_interval(k, n) == pytest.approx(expected, abs=6e-5)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="k=5, n=4"):
        stats.wilson_interval(5, 4)


def test_mcnemar_exact_p():
    assert stats.mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(0, 0) == 1.0
    # b=2, c=9: 2 * P(X <= 2), X ~ Bin(11, 1/2)
    assert stats.mcnemar_p(2, 9) == pytest.approx(2 * (1 + 11 + 55) / 2**11)


def test_paired_difference_counts_and_symmetry():
    before = [1] * 10 + [0] * 30 + [1] * 5 + [0] * 55
    after = [1] * 10 + [1] * 30 + [0] * 5 + [0] * 55
    r = stats.paired_difference(before, after)
    assert (r["n"], r["gained"], r["lost"]) == (100, 30, 5)
    assert r["before"] == pytest.approx(0.15) and r["after"] == pytest.approx(0.40)
    assert r["changed"] == pytest.approx(0.35)  # 35 of 100 moved, either way
    assert r["changed_ci"] == pytest.approx(stats.wilson_interval(35, 100))
    lo, hi = r["diff_ci"]
    assert r["diff"] == pytest.approx(0.25)
    assert 0 < lo < r["diff"] < hi
    back = stats.paired_difference(after, before)
    assert back["diff_ci"] == pytest.approx((-hi, -lo))
    # No change at all: the interval straddles 0.
    same = stats.paired_difference(before, before)
    assert same["diff"] == 0 and same["diff_ci"][0] < 0 < same["diff_ci"][1]


def test_pairing_narrows_the_interval_when_results_agree():
    # 20 -> 30 correct out of 100, every old success kept: far narrower than independent
    # samples' interval (Newcombe's unpaired method 10 with phi = 0 gives that width).
    before = [1] * 20 + [0] * 80
    after = [1] * 30 + [0] * 70
    lo, hi = stats.paired_difference(before, after)["diff_ci"]
    l1, u1 = stats.wilson_interval(20, 100)
    l2, u2 = stats.wilson_interval(30, 100)
    unpaired = (0.1 - math.hypot(0.3 - l2, u1 - 0.2), 0.1 + math.hypot(u2 - 0.3, 0.2 - l1))
    assert hi - lo < 0.6 * (unpaired[1] - unpaired[0])
    assert lo > 0 > unpaired[0]


def test_paired_difference_covers_the_true_change_about_95_percent():
    rng = np.random.default_rng(0)
    n, reps = 128, 1500
    # Correlated pairs: 20 % right both times, 10 % gained, 5 % lost (true change +0.05).
    probs = [0.20, 0.10, 0.05, 0.65]
    hits = 0
    for _ in range(reps):
        cell = rng.choice(4, size=n, p=probs)
        before = np.isin(cell, (0, 2))
        after = np.isin(cell, (0, 1))
        lo, hi = stats.paired_difference(before, after)["diff_ci"]
        hits += lo <= 0.05 <= hi
    assert 0.93 <= hits / reps <= 0.975


def test_paired_difference_refuses_unpaired_input():
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_difference([1, 0], [1, 0, 1])


def test_examples_needed_for_a_3_point_change_and_its_power_by_simulation():
    # a 3-point change when 10 % of the examples flip: (1.95996 sqrt(.1) + 0.84162
    # sqrt(.0991))^2 / .0009 = (0.61979 + 0.26495)^2 / .0009 = 869.8 -> 870 examples
    # (Connor 1987's formula, worked by hand)
    n = stats.examples_needed(0.03, 0.10)
    assert n == 870
    assert stats.mcnemar_power(n, 0.03, 0.10) == pytest.approx(0.80, abs=0.005)
    assert stats.mcnemar_power(200, 0.03, 0.10) < 0.3  # 200 examples: mostly missed
    # simulated: each example gains with p (d + c) / 2 and loses with p (d - c) / 2
    rng = np.random.default_rng(0)
    gains = rng.binomial(n, (0.10 + 0.03) / 2, size=800)
    losses = rng.binomial(n - gains, (0.10 - 0.03) / 2 / (1 - (0.10 + 0.03) / 2))
    detected = np.mean(
        [stats.mcnemar_p(int(b), int(c)) < 0.05 for b, c in zip(losses, gains, strict=True)]
    )
    assert 0.72 < detected < 0.88  # the exact test is a little conservative
    with pytest.raises(ValueError, match="change=0.2, discordant=0.1"):
        stats.examples_needed(0.2, 0.1)


def test_kl_interval_resamples_prompts_around_the_token_weighted_estimate():
    rng = np.random.default_rng(3)
    tokens = rng.integers(8, 65, 32)
    sums = rng.normal(0.02, 0.04, 32) * tokens
    lo, hi = stats.kl_interval(sums, tokens)
    assert lo < sums.sum() / tokens.sum() < hi
    assert stats.kl_interval(sums, tokens) == (lo, hi)  # seeded: the same rows, the same interval
    # four times the prompts from the same distribution: about half the width
    tokens4 = rng.integers(8, 65, 128)
    lo4, hi4 = stats.kl_interval(rng.normal(0.02, 0.04, 128) * tokens4, tokens4)
    assert 0.3 < (hi4 - lo4) / (hi - lo) < 0.75
    # every prompt at the same KL per token: no spread to resample
    assert stats.kl_interval(0.05 * tokens, tokens) == pytest.approx((0.05, 0.05))


def test_kl_interval_covers_the_true_kl_about_95_percent():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(200):
        tokens = rng.integers(8, 65, 32)
        sums = rng.gamma(2.0, 0.01, 32) * tokens  # per-token KL 0.02 on average, skewed
        lo, hi = stats.kl_interval(sums, tokens, n_resamples=500)
        hits += lo <= 0.02 <= hi
    assert 0.85 <= hits / 200 <= 0.99


def test_kl_interval_refuses_what_it_cannot_resample():
    with pytest.raises(ValueError, match="at least two prompts"):
        stats.kl_interval([0.1], [10])
    with pytest.raises(ValueError, match="equally long"):
        stats.kl_interval([0.1, 0.2], [10])
    with pytest.raises(ValueError, match="positive token counts"):
        stats.kl_interval([0.1, 0.2], [10, 0])
