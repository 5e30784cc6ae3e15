"""theta_0 of the AWD step (Schweighofer et al. 2026, Algorithm 1, step 8) in host memory.

Anchored weight decay pulls theta_t towards the initial parameters theta_0, so theta_0 must
stay available for the whole run. `host_anchor` keeps it in pinned host memory, split layer
by layer, so that the fused step (`esawd.es.update.es_step`) copies one slice at a time to
the device. Also here: the memory-kind and sharding helpers that copy, the multi-process
`host_value`, and the detection of parameters replicated over the CPU devices of one process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from esawd.es.noise import is_stacked
from esawd.types import Params


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class HostAnchor:
    """theta_0 in host memory (`pinned_host`), stacked leaves split into per-layer arrays.

    Splitting the layers up front lets `es_step` copy one layer at a time to the device,
    so the anchor never occupies more device memory than one slice.
    """

    treedef: Any
    stacked: tuple[bool, ...]
    leaves: list[Any]  # per leaf: a pinned_host array, or a list of per-layer ones

    def tree_flatten(self):
        return (self.leaves,), (self.treedef, self.stacked)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])

    def arrays(self) -> list[jax.Array]:
        """Every host array of the anchor, flattened."""
        return jax.tree_util.tree_leaves(self.leaves)

    def to_device(self) -> Params:
        """A device-resident copy of theta_0 with the original pytree structure."""
        out = []
        for st, leaf in zip(self.stacked, self.leaves, strict=True):
            if st:
                parts = [jax.device_put(a, a.sharding.with_memory_kind("device")) for a in leaf]
                out.append(jnp.stack(parts))
            else:
                out.append(jax.device_put(leaf, leaf.sharding.with_memory_kind("device")))
        return jax.tree_util.tree_unflatten(self.treedef, out)


def _local_whole(x: Any) -> Any:
    """`x` on one local device: this process's copy of replicated data, or gathered."""
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
        return x
    if x.is_fully_replicated:
        return x.addressable_data(0)
    if not x.is_fully_addressable:
        raise ValueError(
            f"a multi-process anchor needs replicated parameters; got sharding {x.sharding}."
        )
    return jax.device_put(x, SingleDeviceSharding(jax.local_devices()[0]))


def host_anchor(params: Params) -> HostAnchor:
    """Copy theta_0 into host memory (`pinned_host`), split layer by layer.

    One copy per process, in the pinned host memory of its first local device, whatever the
    parameters' sharding: `es_step` copies each slice to wherever the parameters live.
    """
    host = SingleDeviceSharding(jax.local_devices()[0], memory_kind="pinned_host")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    stacked, leaves = [], []
    for path, x in flat:
        x = _local_whole(x)
        st = is_stacked(path) and np.ndim(x) >= 1
        if st:
            leaves.append([jax.device_put(x[i], host) for i in range(np.shape(x)[0])])
        else:
            leaves.append(jax.device_put(x, host))
        stacked.append(st)
    return HostAnchor(treedef, tuple(stacked), leaves)


# ---------------------------------------------------------------------------------------
# Placement: where an anchor slice goes, and how it gets there.
# ---------------------------------------------------------------------------------------


def _memory_sharding(x: Any, memory_kind: str):
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = SingleDeviceSharding(jax.local_devices()[0])
    return sharding.with_memory_kind(memory_kind)


def _slice_sharding(sharding):
    """The sharding of `x[i]` given the sharding of a stacked `x`."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        if spec and spec[0] is not None:
            raise ValueError(f"stacked leaves must not be sharded on the layer axis, got {spec}.")
        return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]), memory_kind="device")
    return sharding.with_memory_kind("device")


def _to_device(a: jax.Array, target) -> jax.Array:
    """Copy a host slice to the device sharding `target`, across processes if need be."""
    if target.is_fully_addressable:
        return jax.device_put(a, target)
    # Each process fills its own devices from its own host copy (no cross-host transfer); a
    # device of a `model`-split target keeps only its part of the slice.
    shards = []
    for device, index in target.addressable_devices_indices_map(a.shape).items():
        whole = jax.device_put(a, SingleDeviceSharding(device, memory_kind="device"))
        shards.append(whole if target.is_fully_replicated else whole[index])
    return jax.make_array_from_single_device_arrays(a.shape, target, shards)


def _cpu_replicas(params: Params) -> jax.sharding.Sharding | None:
    """The sharding of `params` when they are replicated over several CPU devices of this
    process (`jax_num_cpu_devices`, the trainer's distributed.cpu_devices), else None."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(isinstance(x, jax.Array) for x in leaves):
        return None
    sharding = leaves[0].sharding
    devices = sharding.device_set
    if (
        len(devices) < 2
        or any(d.platform != "cpu" for d in devices)
        or not sharding.is_fully_addressable
        or not all(x.sharding == sharding and x.is_fully_replicated for x in leaves)
    ):
        return None
    return sharding


def host_value(x: jax.Array) -> Any:
    """A (possibly multi-process) array as host numpy: replicated values from the local copy,
    sharded ones gathered from every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
