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

A decoder's output is a chain of such sums: `forward_terms(config, seq_len)` counts the
roundings on the longest path from an embedding to one logit (each layer's two RMSNorms, the
q.k dot, the softmax sum and the p.v sum over the keys, o_proj, the MLP's two matmuls and a
few elementwise steps, then the final norm and the head), plus the vocabulary when the result
is a log-softmax: about 1,700 for the sampler's 5-layer test model, 120,000 for SmolLM2-135M.
The worst case n u is then far too loose (0.03 relative for SmolLM2: a 1e-3 bug would pass),
so `logit_tol` uses the statistical bound instead: independent roundings of random sign, each
at most u times the scale, add like a random walk with standard deviation sqrt(n / 3) u; the
difference of two evaluations has sqrt(2) times that, and SIGMAS = 6 standard deviations of
it make a false failure a one-in-10^8 event per value, i.e. tol = 6 sqrt(2 n / 3) u scale.
The scale is the largest |logit| (or |log-prob|) the comparison sees. This is a model, not a
proof: normalisations and the softmax can amplify an error somewhat, and the roundings are not
truly independent; `tests/conditions.sh` checks that the bound holds under reduction orders,
fusions and math libraries the default run never uses.

Greedy decoding turns values into choices: two programs whose logits differ by a rounding pick
different tokens wherever the top two logits are closer than that. `assert_greedy_picks` and
`assert_same_greedy` therefore require a token to be the argmax only where its margin exceeds
the tolerance, and accept either of a near-tie.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

SAFETY = 2.0
SIGMAS = 6.0


def unit_roundoff(dtype) -> float:
    """u = eps / 2: the largest relative error of one rounding to `dtype`."""
    return float(ml_dtypes.finfo(dtype).eps) / 2


def float_tol(dtype, terms: int = 1, *, safety: float = SAFETY) -> float:
    """|a - b| / sum|x_i| allowed between two evaluations of a `terms`-rounding sum in dtype."""
    return safety * 2 * max(int(terms), 1) * unit_roundoff(dtype)


def forward_terms(config, seq_len: int, *, log_softmax: bool = False) -> int:
    """Roundings on the longest chain from an embedding to one logit of `config`'s decoder."""
    c = config
    per_layer = 2 * c.d_model + c.head_dim + 2 * seq_len + c.n_heads * c.head_dim + c.d_model
    per_layer += c.d_ff + 16  # rope, softmax exp/divide, SiLU, gate product, residual adds
    return c.n_layers * per_layer + 2 * c.d_model + (c.vocab_size + 2 if log_softmax else 0)


def chain_tol(dtype, terms: int, *, sigmas: float = SIGMAS) -> float:
    """|a - b| / scale allowed between two evaluations of a long chain of `terms` roundings,
    each at most u * scale, of random sign (the statistical bound above)."""
    return sigmas * float(np.sqrt(2 * max(int(terms), 1) / 3)) * unit_roundoff(dtype)


def logit_tol(config, seq_len: int, scale: float, *, log_softmax: bool = False) -> float:
    """Absolute difference allowed between two float32 evaluations of `config`'s logits (or
    log-probs) over `seq_len` positions whose largest magnitude is `scale`."""
    terms = forward_terms(config, seq_len, log_softmax=log_softmax)
    return chain_tol(np.float32, terms) * float(scale)


def assert_greedy_picks(tokens, logits, *, tol: float) -> None:
    """Each of `tokens` [..., T] is within `tol` of the best of its `logits` [..., T, V], and
    is the argmax wherever the runner-up is more than `tol` behind."""
    tokens, logits = np.asarray(tokens), np.asarray(logits, np.float64)
    picked = np.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    best = logits.max(axis=-1)
    short = best - picked
    if np.any(short > tol):
        i = np.unravel_index(np.argmax(short), short.shape)
        raise AssertionError(
            f"token {tokens[i]} at {i} is {short[i]:.3g} below the best logit "
            f"(token {logits[i].argmax()}), more than the tolerance {tol:.3g}"
        )
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > tol
    np.testing.assert_array_equal(tokens[clear], logits.argmax(-1)[clear])


def assert_same_greedy(a, b, logits, *, tol: float) -> None:
    """Two greedy decodes `a`, `b` [B, T] agree up to a near-tie: where they first differ,
    both tokens are within `tol` of the best of `logits` [B, T, V] (a's teacher-forced logits),
    and past that point they may diverge."""
    a, b, logits = np.asarray(a), np.asarray(b), np.asarray(logits, np.float64)
    for r in range(a.shape[0]):
        diff = np.flatnonzero(a[r] != b[r])
        if diff.size == 0:
            continue
        t = int(diff[0])
        row = logits[r, t]
        gap = row.max() - min(row[a[r, t]], row[b[r, t]])
        assert gap <= tol, (
            f"row {r} first differs at step {t} ({a[r, t]} vs {b[r, t]}) where the logits are "
            f"{gap:.3g} apart, more than a rounding ({tol:.3g}) explains"
        )


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
