"""Tolerances for comparing floating-point results that were computed two ways.

Two computations of the same mathematical value agree bit for bit only when they are the same
program on the same inputs: the same HLO, compiled the same way, on the same device count and
thread count. XLA:CPU chooses the order of a reduction (vector width, tree reduction, how a
loop is split over threads), which operations it fuses and whether an `exp` is a polynomial
or a library call per CPU and per program, so `jit(f)` and `f` run op by op, or a fused and
an unfused kernel, or the same code on an AVX2 and an AVX-512 machine, may round differently.
The tests therefore compare bitwise only where both sides run the same computation (resume,
replay, a regenerated noise slice, a sharded run whose reduction order is fixed), and say why
in a comment; everywhere else they use the bound below.

The bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., sec. 2.2, 4.2).
With unit roundoff u = eps / 2 of the dtype (2^-24 for float32, 2^-8 for bfloat16), every
operation rounds as fl(a op b) = (a op b)(1 + d), |d| <= u, and a sum s = sum_i x_i of n terms
evaluated in *any* order (left to right, pairwise, blocked, split over threads) obeys

    |fl(s) - s| <= gamma_{n-1} sum_i |x_i|,    gamma_k = k u / (1 - k u) ~ k u.

If each term x_i itself went through k roundings before the sum (a product: 1; an `exp` or
`log`, which XLA evaluates to within about 2 ulp: 2), the bound becomes gamma_{n-1+k}. Two
evaluations that may round differently each err by that much, so their difference is at most

    |a - b| <= 2 (n - 1 + k) u sum_i |x_i|.

`float_tol(dtype, terms)` returns that factor for terms = n + k (the roundings on the longest
chain that feeds the result), times a small safety factor for what the bound leaves out (the
O(u^2) terms, a transcendental that is 3 ulp off instead of 2). The tolerance scales with
sum |x_i|, not with |s|: a sum that cancels (a loss of terms of both signs, a logit near zero)
keeps the absolute error of its terms, so a relative test on |s| is only valid where nothing
cancels (all terms of one sign). The bound is worst case; rounding errors of random sign grow
like sqrt(n) u instead, so for the few-hundred-term sums of these tests it is at most ~20x
above what is seen, and still far below a real bug: a missing term or wrong sign moves the
result by a whole term, a 1e-3 relative error moves it by 1e-3 sum |x_i| >> 2 n u sum |x_i|
for n << 1e-3 / (2u) ~ 8000 terms in float32.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

SAFETY = 2.0


def unit_roundoff(dtype) -> float:
    """u = eps / 2: the largest relative error of one rounding to `dtype`."""
    return float(ml_dtypes.finfo(dtype).eps) / 2


def float_tol(dtype, terms: int = 1, *, safety: float = SAFETY) -> float:
    """|a - b| / sum|x_i| allowed between two evaluations of a `terms`-rounding sum in dtype."""
    return safety * 2 * max(int(terms), 1) * unit_roundoff(dtype)


def assert_sum_close(got, want, *, scale, dtype, terms: int, safety: float = SAFETY) -> None:
    """|got - want| <= float_tol(dtype, terms) * scale elementwise; scale = sum of |terms|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    tol = float_tol(dtype, terms, safety=safety) * np.broadcast_to(np.abs(scale), got.shape)
    err = np.abs(got - want)
    bad = ~(err <= tol)  # NaN fails too
    if np.any(bad):
        worst = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(tol, 1e-300), 0)),
                                 got.shape) if got.ndim else ()  # fmt: skip
        raise AssertionError(
            f"{int(bad.sum())} of {got.size} differ by more than {terms} roundings of "
            f"{np.dtype(dtype).name} allow: at {worst} got {got[worst]!r}, want {want[worst]!r}, "
            f"|diff| {err[worst]:.3g} > tol {tol[worst]:.3g} (scale {np.abs(scale)})"
        )
