"""tests/numerics.py: the tolerances hold for real reorderings and still catch real bugs."""

import jax
import ml_dtypes
import numpy as np
import pytest
from numerics import (
    assert_greedy_picks,
    assert_same_greedy,
    assert_sum_close,
    chain_tol,
    float_tol,
    forward_terms,
)
from tiny_model import optimized_xla, unoptimized_from_env

from esawd.models import ModelConfig


def float32_sum(x, order):
    acc = np.float32(0)
    for v in x[order]:
        acc = np.float32(acc + v)  # one rounding per addition, left to right
    return acc


def test_sum_tolerance_covers_any_order_and_catches_a_missing_term_or_1e3_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500).astype(np.float32)  # both signs: the sum cancels
    scale = np.abs(x.astype(np.float64)).sum()
    exact = x.astype(np.float64).sum()
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(x.size)
        assert_sum_close(float32_sum(x, order), exact, scale=scale, dtype=np.float32, terms=500)
    assert_sum_close(np.sum(x), exact, scale=scale, dtype=np.float32, terms=500)  # pairwise
    with pytest.raises(AssertionError, match="500 roundings of float32"):
        assert_sum_close(exact - x[7], exact, scale=scale, dtype=np.float32, terms=500)
    with pytest.raises(AssertionError):
        assert_sum_close(exact + 1e-3 * scale, exact, scale=scale, dtype=np.float32, terms=500)
    with pytest.raises(AssertionError):
        assert_sum_close(np.nan, exact, scale=scale, dtype=np.float32, terms=500)


def test_tolerances_scale_with_the_dtype():
    assert float_tol(np.float32, 10) == pytest.approx(2 * 2 * 10 * 2.0**-24)
    assert float_tol(ml_dtypes.bfloat16, 1) == pytest.approx(2 * 2 * 2.0**-8)
    assert chain_tol(np.float32, 1500) == pytest.approx(6 * np.sqrt(1000) * 2.0**-24)


def test_chain_tolerance_covers_a_long_float32_chain_but_not_a_1e3_error():
    # A 2,000-step chain of multiply-adds of O(1) values, in float32 and float64.
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.5, 1.0, 2000), rng.normal(size=2000)
    x32, x64 = np.float32(1), 1.0
    for ai, bi in zip(a, b, strict=True):
        x32 = np.float32(np.float32(x32 * np.float32(ai)) + np.float32(bi))
        x64 = x64 * float(np.float32(ai)) + float(np.float32(bi))
    scale = 1 + np.abs(b).max()
    tol = chain_tol(np.float32, 2 * 2000) * scale
    assert abs(float(x32) - x64) <= tol
    assert 1e-3 * scale > 10 * tol  # a 1e-3 error is far outside it


def test_forward_terms_count_the_model_shape():
    small = ModelConfig(arch="llama", vocab_size=100, d_model=8, n_layers=1, n_heads=2,
                        n_kv_heads=1, head_dim=4, d_ff=16, eos_ids=(1,))  # fmt: skip
    deep = ModelConfig(arch="llama", vocab_size=100, d_model=8, n_layers=3, n_heads=2,
                       n_kv_heads=1, head_dim=4, d_ff=16, eos_ids=(1,))  # fmt: skip
    one = forward_terms(small, 10)
    assert forward_terms(deep, 10) - forward_terms(small, 10) == 2 * (one - 2 * 8)
    assert forward_terms(small, 10, log_softmax=True) == one + 102
    assert forward_terms(small, 20) == one + 2 * 10


def test_greedy_checks_accept_near_ties_only():
    logits = np.array([[[0.0, 5.0, 1.0], [2.0, 2.0 + 1e-6, 0.0], [3.0, 0.0, 0.0]]])  # [1, 3, V]
    assert_greedy_picks(np.array([[1, 1, 0]]), logits, tol=1e-4)
    assert_greedy_picks(np.array([[1, 0, 0]]), logits, tol=1e-4)  # the near-tie either way
    with pytest.raises(AssertionError, match="below the best logit"):
        assert_greedy_picks(np.array([[2, 1, 0]]), logits, tol=1e-4)
    assert_same_greedy(np.array([[1, 1, 0]]), np.array([[1, 0, 2]]), logits, tol=1e-4)
    with pytest.raises(AssertionError, match="first differs at step 0"):
        assert_same_greedy(np.array([[1, 1, 0]]), np.array([[2, 1, 0]]), logits, tol=1e-4)


def test_suite_compiles_unoptimized_and_optimized_xla_restores():
    """tests/conftest.py turns most XLA optimizations off (unless the environment says 0);
    tiny_model.optimized_xla turns them on for a block and restores the suite's setting."""
    flag = "jax_disable_most_optimizations"
    want = unoptimized_from_env()
    assert jax.config.values[flag] is want
    with optimized_xla():
        assert jax.config.values[flag] is False
    assert jax.config.values[flag] is want
