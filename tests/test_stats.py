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
