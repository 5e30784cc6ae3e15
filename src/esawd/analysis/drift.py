"""Weight drift of theta_t from theta_0 (paper Sec. 5): ||theta_t - theta_0|| accumulated in
float64, globally, per module type and per layer.

Each parameter counts once. The reference's `evaluation/evaluate_weight_change.py` sums over
vLLM's `state_dict()`, where a tied output head (`lm_head.weight`, the embedding's own tensor)
is a second key, so its norm counts the embedding's drift twice; `frobenius_reference` and
`relative_reference` report that number too (docs/analysis.md, "Where the reference's
analysis differs").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from esawd import es
from esawd.analysis.errors import AnalysisError
from esawd.types import Params

# Module types of the drift breakdown, from the parameter paths of `esawd.models`.
MODULES = ("embedding", "attn_q", "attn_k", "attn_v", "attn_o", "mlp", "norms", "head")


def module_of(path: tuple[str, ...]) -> str:
    """The module type of a parameter path of `esawd.models` (one of MODULES)."""
    names = [str(p) for p in path]
    if names[0] == "embed":
        return "embedding"
    if names[0] == "lm_head":
        return "head"
    if any("norm" in n for n in names):
        return "norms"
    for proj, module in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
        if proj in names:
            return module
    if "o_proj" in names:
        return "attn_o"
    if "mlp" in names:
        return "mlp"
    return names[0]


def _path_names(path) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _layer_slices(x, stacked: bool) -> Iterable[tuple[int | None, np.ndarray]]:
    """A leaf as float64 host arrays, one layer at a time for stacked layer weights."""
    if stacked:
        for i in range(x.shape[0]):
            yield i, np.asarray(es.host_value(x[i]) if isinstance(x, jax.Array) else x[i])
    else:
        yield None, np.asarray(es.host_value(x) if isinstance(x, jax.Array) else x)


def has_tied_head(params: Params) -> bool:
    """Whether the output head is the embedding: `esawd.models` params then have no lm_head."""
    return isinstance(params, Mapping) and "embed" in params and "lm_head" not in params


def weight_drift(
    params: Params, theta0: Params, *, tied_head: bool | None = None
) -> dict[str, Any]:
    """||theta - theta_0|| in float64: global, relative to ||theta_0||, per module and layer.

    Every parameter counts once (`frobenius`, `relative`). `frobenius_reference` and
    `relative_reference` are the reference's numbers, which count a tied head's tensor (the
    embedding) a second time, in the drift and in ||theta_0||; they equal ours when the head
    is untied. `tied_head`: whether the head is the embedding; None: `has_tied_head(params)`.

    Leaves under params["layers"] are stacked [L, ...]; they are read one layer at a time, so
    the float64 copies stay the size of one layer.
    """
    if tied_head is None:
        tied_head = has_tied_head(params)
    squares: dict[str, float] = {}
    per_layer: dict[int, float] = {}
    total = ref = abs_sum = 0.0
    embed_sq = embed_ref = 0.0  # the embedding's squared drift and squared norm
    max_abs = 0.0
    count = 0
    flat0 = dict(jax.tree_util.tree_leaves_with_path(theta0))
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        names = _path_names(path)
        x0 = flat0.get(path)
        if x0 is None or np.shape(x0) != np.shape(x):
            raise AnalysisError(
                f"parameter {jax.tree_util.keystr(path)} {np.shape(x)} has no match in theta_0 "
                f"({None if x0 is None else np.shape(x0)}); are they from the same model?"
            )
        stacked = names[0] == "layers"
        module = module_of(names)
        for (i, a), (_, b) in zip(
            _layer_slices(x, stacked), _layer_slices(x0, stacked), strict=True
        ):
            b64 = b.astype(np.float64)
            d = a.astype(np.float64) - b64
            sq = float(np.sum(d * d))
            ref_sq = float(np.sum(b64 * b64))
            total += sq
            ref += ref_sq
            if module == "embedding":
                embed_sq, embed_ref = embed_sq + sq, embed_ref + ref_sq
            squares[module] = squares.get(module, 0.0) + sq
            if i is not None:
                per_layer[i] = per_layer.get(i, 0.0) + sq
            abs_d = np.abs(d)
            abs_sum += float(abs_d.sum())
            max_abs = max(max_abs, float(abs_d.max(initial=0.0)))
            count += d.size
    frob = float(np.sqrt(total))
    # The reference's state_dict holds a tied head as a second key: the embedding twice.
    total_ref, ref_ref = (total + embed_sq, ref + embed_ref) if tied_head else (total, ref)
    frob_ref = float(np.sqrt(total_ref))
    return {
        "frobenius": frob,
        "relative": frob / float(np.sqrt(ref)) if ref > 0 else 0.0,
        "frobenius_reference": frob_ref,
        "relative_reference": frob_ref / float(np.sqrt(ref_ref)) if ref_ref > 0 else 0.0,
        "per_module": {m: float(np.sqrt(v)) for m, v in squares.items()},
        "per_layer": [float(np.sqrt(per_layer[i])) for i in sorted(per_layer)],
        "mean_abs": abs_sum / max(count, 1),
        "max_abs": max_abs,
        "num_params": count,
    }
