"""The paper's mechanism on a toy reward: drift ~ t / N, bounded by AWD, reward still learnt."""

import numpy as np
import pytest
from tiny_model import optimized_xla

from esawd import toy

# 2,000 ES iterations in the module fixture: slow; the group is meant to keep it on one
# pytest-xdist worker, which does not yet hold (docs/testing.md)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("toy")]

COMMON = dict(num_iterations=500, dim=2000, num_constrained=10, alpha=5e-4, sigma=1e-3)


@pytest.fixture(scope="module")
def runs():
    with optimized_xla():  # compute-bound: 2x slower as the suite compiles by default
        return {
            "n30": toy.run_random_walk(population_size=30, **COMMON),
            "n128": toy.run_random_walk(population_size=128, **COMMON),
            "n256": toy.run_random_walk(population_size=256, **COMMON),
            "awd": toy.run_random_walk(population_size=30, lam=10.0, kind="l2", **COMMON),
        }


def at(run, t):
    return float(run.drift_perp[np.searchsorted(run.iterations, t)])


def test_unconstrained_drift_grows_with_iterations(runs):
    for name in ("n30", "n128", "n256"):
        r = runs[name]
        assert at(r, 125) < at(r, 250) < at(r, 500)
        assert at(r, 500) > 1.6 * at(r, 125)  # sqrt(t): expected ratio 2


def test_drift_shrinks_with_population_size(runs):
    # Squared drift ~ t / N: expected ratios sqrt(128/30) = 2.07 and sqrt(2) = 1.41.
    assert at(runs["n30"], 500) > 1.7 * at(runs["n128"], 500)
    assert at(runs["n128"], 500) > 1.2 * at(runs["n256"], 500)


def test_drift_matches_random_walk_prediction(runs):
    for name, n in (("n30", 30), ("n256", 256)):
        r = runs[name]
        pred = toy.predicted_drift(
            r.iterations[1:], population_size=n, dim=2000, num_constrained=10, alpha=5e-4
        )
        np.testing.assert_allclose(r.drift_perp[1:], pred, rtol=0.15)


def test_awd_bounds_drift_and_still_learns(runs):
    awd, plain = runs["awd"], runs["n30"]
    assert at(awd, 500) < 0.6 * at(plain, 500)  # stationary: ~0.45x at t = 500
    assert at(awd, 500) < 1.15 * at(awd, 250)  # it has stopped growing
    assert awd.loss[-1] < 0.01 * awd.loss[0]  # the constrained reward is still learnt
    assert plain.loss[-1] < 0.01 * plain.loss[0]
