"""The device mesh of a run, `pop` x `model`, and where each parameter lives on it.

    mesh = run_mesh(jax.devices(), model_axis=2)       # [devices / 2, 2], ("pop", "model")
    params = shard_params(params, mesh, config=config) # tensor parallel over `model`

Population members spread over `pop`; each member spans the `model` devices of its row, which
hold one slice of every large weight. Two layouts of that slice (`LAYOUTS`):

- "tensor" (Megatron-LM, Shoeybi et al. 2019): q/k/v and gate/up split by output columns
  (whole heads, MLP width), o and down by input rows, the embedding and LM head by
  vocabulary. A layer's attention and MLP each end in one all-reduce of activations; the KV
  cache splits by KV head with the heads. Attention is split only when the axis divides both
  the query and the KV heads (with `config`); otherwise it stays whole and only the MLP and
  the vocabulary split, since a head cut in two is gathered again at every decode step.
- "fsdp": every matrix split along its larger dimension.

Measured (benchmarks/model_axis.py, docs/benchmarks.md): one member's compiled generation on 4
faked CPU devices holds the same memory per device under both, but "tensor" moves less per
decode step (Qwen2.5-0.5B at model_axis 2: 2.7 MB per device against 5.9 MB under "fsdp", 2
all-reduces per layer and no gathers). Runs use "tensor". A dimension the axis does not divide
stays whole (replicated), which is correct but uses more memory; `esawd.memplan` counts it.

Everything else is left to XLA's SPMD partitioner (GSPMD): the programs are the same for one
device or many, and a split member computes what an unsplit one does, to the rounding of its
split matmul sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from esawd.types import Params

AXES = ("pop", "model")
LAYOUTS = ("tensor", "fsdp")

# Tensor-parallel roles by parameter name: split the output columns, or the input rows.
_COLUMNS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
_ROWS = ("o_proj", "down_proj")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def run_mesh(devices: Sequence[jax.Device] | None = None, *, model_axis: int = 1) -> Mesh:
    """A 2-D mesh ("pop", "model") over `devices` (default: every device of every process):
    `model_axis` consecutive devices per member, the rest of the devices along `pop`."""
    devices = list(jax.devices() if devices is None else devices)
    if model_axis < 1 or len(devices) % model_axis:
        raise ValueError(
            f"model_axis={model_axis} must be >= 1 and divide the {len(devices)} devices; "
            f"choose one of {[d for d in range(1, len(devices) + 1) if len(devices) % d == 0]}."
        )
    # Consecutive devices form a member: on a GPU node they share the fastest links (NVLink),
    # and across hosts a member stays within one host when model_axis divides its devices.
    return Mesh(np.asarray(devices).reshape(-1, model_axis), AXES)


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _dims(name: str, shape: tuple[int, ...], stacked: bool, layout: str) -> tuple[int, ...]:
    """The dimensions of a leaf that `layout` would split, most preferred first."""
    lead = 1 if stacked else 0  # the layer axis of a stacked leaf is never split
    piece = shape[lead:]
    if len(piece) == 2:  # a matrix [in, out]
        if layout == "fsdp":
            return tuple(lead + d for d in np.argsort([-piece[0], -piece[1]], kind="stable"))
        leaf = name.split("/")[-2] if "/" in name else name
        if leaf in _COLUMNS:
            return (lead + 1,)
        if leaf in _ROWS:
            return (lead,)
        if leaf == "embed":  # the embedding [V, D]: by vocabulary
            return (lead,)
        return ()
    if len(piece) == 1 and layout == "tensor":  # q/k/v biases follow their columns
        leaf = name.split("/")[-2] if "/" in name else ""
        return (lead,) if leaf in ("q_proj", "k_proj", "v_proj") else ()
    return ()


def param_specs(params: Params, *, model_axis: int, layout: str = "tensor", config=None) -> Any:
    """The PartitionSpec of every leaf of `params` (arrays or shapes) on a ("pop", "model")
    mesh with `model_axis` devices per member: replicated over `pop`, split over `model` as
    `layout` says; a dimension `model_axis` does not divide stays whole. With the model's
    `config`, "tensor" splits attention only along whole query and KV heads."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; use one of {LAYOUTS}.")
    whole_heads = config is None or (
        config.n_heads % model_axis == 0 and config.n_kv_heads % model_axis == 0
    )

    def spec(path, x) -> PartitionSpec:
        shape = tuple(x) if isinstance(x, tuple) else tuple(np.shape(x))
        if model_axis == 1:
            return PartitionSpec()
        name = _name(path)
        parts = name.split("/")
        if layout == "tensor" and not whole_heads and len(parts) > 1 and parts[-2] in _ATTENTION:
            return PartitionSpec()
        stacked = name.startswith("layers/")
        for d in _dims(name, shape, stacked, layout):
            if shape[d] % model_axis == 0:
                axes = [None] * len(shape)
                axes[d] = "model"
                return PartitionSpec(*axes)
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(
        spec, params, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
    )


def param_shardings(params: Params, mesh: Mesh, *, layout: str = "tensor", config=None) -> Any:
    """The NamedSharding of every leaf of `params` on `mesh` (`param_specs`)."""
    specs = param_specs(params, model_axis=model_axis_size(mesh), layout=layout, config=config)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def shard_params(params: Params, mesh: Mesh, *, layout: str = "tensor", config=None) -> Params:
    """`params` placed on `mesh`: replicated over `pop`, split over `model` (`param_specs`;
    pass the model's `config` so attention splits along whole heads only).

    Host (numpy) leaves go to each device as their own slice only."""
    shardings = param_shardings(params, mesh, layout=layout, config=config)
    return jax.tree.map(_put, params, shardings)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) or sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Several processes: each fills its own devices from its own host copy.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def model_axis_size(mesh: Mesh) -> int:
    """Devices per member: the size of the mesh's `model` axis (1 when it has none)."""
    return int(dict(mesh.shape).get("model", 1))


def split_fraction(
    params: Params, *, model_axis: int, layout: str = "tensor", config=None
) -> float:
    """The share of the parameters one device of a member holds: 1 / model_axis for split
    leaves, 1 for those left whole."""
    flat = jax.tree_util.tree_leaves(
        param_specs(params, model_axis=model_axis, layout=layout, config=config),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    sizes = [
        int(np.prod(s if isinstance(s, tuple) else np.shape(s)))
        for s in jax.tree_util.tree_leaves(
            params, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
        )
    ]
    total = sum(sizes)
    held = sum(n / (model_axis if any(spec) else 1) for n, spec in zip(sizes, flat, strict=True))
    return held / total if total else 1.0
