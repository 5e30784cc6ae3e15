"""The memory plan of a run: what each device and each host holds, before any weight is loaded.

ES (Schweighofer et al. 2026, Algorithm 1) keeps per device:

    masters      theta_t in float32 (or float16, es.precision), its `model`-axis slice
    update       the fused step's live slices: one layer's noise chunk, delta and anchor slice
    members      per member of a device batch: its perturbed weights and their compute and
                 decode-layout copies (low rank: its factors instead), its KV cache for the
                 prompts x (prompt + max_new_tokens) slots, the prefill's activations and the
                 logits
    host         theta_0 (the anchor) in pinned host memory, one copy per process

GRPO keeps the masters, theta_0 as the reference policy, AdamW's two moments, a gradient
accumulator, the sampler's KV cache for one sampling batch, and one micro-batch's activations.

Weights split over the `model` axis (esawd.mesh) count their slice; leaves the axis does not
divide count whole. The plan is an estimate: tests/test_memplan.py holds it within 30 % of
what XLA's compiled programs report (`compiled.memory_analysis()`) on a tiny model and on
SmolLM2-135M, and the trainer refuses a run whose plan exceeds the device before loading it.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from esawd import mesh as mesh_lib
from esawd import models
from esawd.es.noise import is_stacked

GiB = 2**30
HEADROOM = 0.8  # of a device's limit the plan may fill: XLA's own buffers, fragmentation


# ---------------------------------------------------------------------------------------
# One member's generation.
# ---------------------------------------------------------------------------------------


def perturbation_elements(config, rank: int) -> int:
    """Elements of one member's factored perturbation: (m + n) r per 2-D weight slice, and
    every norm scale and bias."""
    total = 0
    for path, shape in _shapes(config):
        layers, piece = (shape[0], shape[1:]) if is_stacked(path) else (1, shape)
        total += layers * (sum(piece) * rank if len(piece) == 2 else math.prod(piece))
    return total


def _shapes(config):
    return jax.tree_util.tree_flatten_with_path(
        models.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple)
    )[0]


def split_fraction(config, model_axis: int) -> float:
    """The share of the parameters one device of a member holds (`esawd.mesh`)."""
    if model_axis == 1:
        return 1.0
    shapes = models.param_shapes(config)
    return mesh_lib.split_fraction(shapes, model_axis=model_axis, config=config)


def member_bytes(
    config, *, batch: int, width: int, max_new_tokens: int, rank: int = 0, model_axis: int = 1
) -> int:
    """Device memory one population member's generation needs, per device of its `model_axis`:
    the sum of `member_parts`."""
    return sum(member_parts(config, batch=batch, width=width, max_new_tokens=max_new_tokens,
                            rank=rank, model_axis=model_axis).values())  # fmt: skip


def member_parts(
    config, *, batch: int, width: int, max_new_tokens: int, rank: int = 0, model_axis: int = 1
) -> dict[str, int]:
    """One member's generation, per device of its `model_axis`, in bytes: "weights" (its
    perturbed float32 parameters and their compute-dtype and decode-layout copies; at low rank
    its factors, their fused decode layout and its perturbed norms and biases), "kv_cache"
    (`batch` prompts x (`width` + `max_new_tokens`) slots) and "activations" (the prefill's
    largest: the MLP's and the attention scores over the cache, and the logits)."""
    c = config
    item = np.dtype(c.dtype).itemsize
    slots = width + max_new_tokens
    # the cache and the scores split by head when attention does (esawd.mesh)
    split = c.n_heads % model_axis == 0 and c.n_kv_heads % model_axis == 0
    heads = model_axis if split else 1
    if rank:
        # float32 factors, compute-dtype copies, the decode layout's fused (block) factors
        params = perturbation_elements(c, rank) * (4 + 3 * item)
    else:
        # float32 perturbed copy, the per-layer decode copies, and a compute-dtype cast between
        # (none for float32, where the cast is the identity)
        per_param = 4 + item + (item if item != 4 else 0)
        params = c.num_params() * per_param * split_fraction(c, model_axis)
    cache = 2 * c.n_layers * batch * c.n_kv_heads * c.head_dim * slots * item / heads
    prefill = batch * width * (2 * c.d_ff / model_axis + 4 * c.d_model) * item
    scores = batch * c.n_heads / heads * width * slots * 4 * 2  # scores, probabilities (f32)
    vocab = model_axis if c.vocab_size % model_axis == 0 else 1
    logits = batch * c.vocab_size / vocab * 4 * 2
    return {"weights": int(params), "kv_cache": int(cache),
            "activations": int(prefill + scores + logits)}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Limits.
# ---------------------------------------------------------------------------------------


def host_memory_bytes() -> int:
    """This machine's physical memory, shared by this process's CPU devices."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // max(1, len(jax.local_devices(backend="cpu")))


def device_limit(device) -> tuple[int, str]:
    """The memory one device may use, and where the number comes from: the accelerator's own
    limit, or (the CPU reports none) this process's share of the machine's memory."""
    stats = device.memory_stats()
    limit = stats.get("bytes_limit") if stats else None
    if limit:
        return int(limit), f"{device.device_kind}'s limit"
    return host_memory_bytes(), "this process's share of host memory"


def members_per_batch_for(
    device, *, member_bytes: int, members: int, reserved_bytes: int = 0, headroom: float = HEADROOM,
    host_bytes: int | None = None,
) -> int:  # fmt: skip
    """How many members to generate together on `device` (es.members_per_batch=0): as many of
    its `members` as fit, at `member_bytes` each, in `headroom` of its memory limit less
    `reserved_bytes` (what the trainer keeps there anyway). The limit, not the memory free at
    the moment, so that every process of a multi-host run picks the same number. A device that
    reports no limit (the CPU) uses `host_bytes` when given (low rank: this process's share of
    the machine's memory), else gets 1: vmapping full-rank members measured no faster there
    (docs/benchmarks.md), since each member brings its own weights."""
    stats = device.memory_stats()
    limit = stats.get("bytes_limit") if stats else None
    limit = limit or host_bytes
    if not limit:
        return 1
    free = headroom * limit - reserved_bytes
    return max(1, min(members, int(free) // max(1, member_bytes)))


# ---------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device (`device`) and per process (`host`) of one run, and its limit."""

    method: str
    devices: int
    model_axis: int
    device: tuple[tuple[str, int], ...]  # (what, bytes) on each device
    host: tuple[tuple[str, int], ...]  # (what, bytes) in each process's host memory
    limit: int  # bytes of one device the plan may fill (HEADROOM of its limit)
    limit_source: str
    members_per_batch: int = 0  # ES: members generated together per device
    per_member: int = 0  # ES: bytes each of them adds
    fixes: tuple[str, ...] = ()  # the keys that would shrink the plan

    @property
    def total(self) -> int:
        return sum(b for _, b in self.device)

    @property
    def fits(self) -> bool:
        return self.total <= self.limit

    def format(self) -> str:
        """The plan as a table, as the trainer prints it at start-up."""
        w = max(len(k) for k, _ in self.device + self.host)
        head = (
            f"Memory plan ({self.method}): {self.devices} device(s), {self.model_axis} per "
            f"{'member' if self.method == 'ES' else 'model'} (model axis)"
        )
        lines = [head, "  per device:"]
        lines += [f"    {k:<{w}}  {_gib(b)}" for k, b in self.device]
        lines.append(f"    {'total':<{w}}  {_gib(self.total)}  of {_gib(self.limit)} usable "
                     f"({HEADROOM:.0%} of {self.limit_source})")  # fmt: skip
        if self.members_per_batch:
            lines.append(f"    members per batch: {self.members_per_batch} "
                         f"({_gib(self.per_member)} each)")  # fmt: skip
        if self.host:
            lines.append("  per process (host memory):")
            lines += [f"    {k:<{w}}  {_gib(b)}" for k, b in self.host]
        return "\n".join(lines)

    def refusal(self) -> str:
        """Why the run cannot fit, naming the numbers and the keys that would fix it."""
        parts = ", ".join(f"{k} {_gib(b)}" for k, b in self.device)
        return (
            f"this run needs {_gib(self.total)} per device ({parts}) but "
            f"{_gib(self.limit)} is usable ({HEADROOM:.0%} of {self.limit_source}). "
            f"To fit, change {', '.join(self.fixes)}. Nothing was loaded."
        )


def _gib(b: float) -> str:
    return f"{b / GiB:8.2f} GiB"


def es_plan(
    config, *, prompts: int, width: int, max_new_tokens: int, population_size: int,
    devices: int, model_axis: int = 1, rank: int = 0, members_per_batch: int = 0,
    masters_dtype: str = "float32", limit: tuple[int, str] | None = None,
) -> MemoryPlan:  # fmt: skip
    """The memory plan of an ES run (module docstring). `members_per_batch` 0 is automatic:
    one at full rank, as many of a device's members as fit at low rank. `limit` is a device's
    (bytes, source) (`device_limit` of the first local device by default)."""
    limit = device_limit(jax.local_devices()[0]) if limit is None else limit
    usable = int(HEADROOM * limit[0])
    frac = split_fraction(config, model_axis)
    n = config.num_params()
    masters = int(n * np.dtype(masters_dtype).itemsize * frac)
    largest = max(math.prod(s[1:] if is_stacked(p) else s) for p, s in _shapes(config))
    update = int(3 * 4 * largest * frac)  # noise chunk, delta, anchor slice (float32)
    parts = member_parts(config, batch=prompts, width=width, max_new_tokens=max_new_tokens,
                         rank=rank, model_axis=model_axis)  # fmt: skip
    member = sum(parts.values())
    rows = [("masters theta_t", masters), ("update slices", update)]
    if rank:  # the members of a batch share the weights' compute and decode copies
        item = np.dtype(config.dtype).itemsize
        rows.append(("shared compute copies", int(2 * item * n * frac)))
    per_device = -(-population_size // max(1, devices // model_axis))
    if not members_per_batch:
        members_per_batch = 1
        if rank:
            free = usable - sum(b for _, b in rows)
            members_per_batch = max(1, min(per_device, free // max(1, member)))
    k, slots = members_per_batch, width + max_new_tokens
    rows += [
        (f"member weights ({k} x {_gib(parts['weights']).strip()})", k * parts["weights"]),
        (f"KV cache ({k} x {prompts} prompts x {slots} slots)", k * parts["kv_cache"]),
        (f"activations ({k} x {_gib(parts['activations']).strip()})", k * parts["activations"]),
    ]
    fixes = [f"es.model_axis (now {model_axis}: more devices per member)"]
    if members_per_batch > 1:
        fixes.append(f"es.members_per_batch (now {members_per_batch})")
    fixes += [f"task.num_train (now {prompts} prompts)",
              f"task.max_new_tokens (now {max_new_tokens})"]  # fmt: skip
    if np.dtype(config.dtype).itemsize == 4:
        fixes.append("model.compute_dtype (now float32; bfloat16 halves the copies and cache)")
    return MemoryPlan(
        "ES", devices, model_axis, tuple(rows),
        (("anchor theta_0 (pinned)", int(n * np.dtype(masters_dtype).itemsize)),),
        usable, limit[1], members_per_batch, member, tuple(fixes),
    )  # fmt: skip


def grpo_plan(
    config, *, generate_batch: int, micro_batch: int, width: int, max_new_tokens: int,
    model_axis: int = 1, limit: tuple[int, str] | None = None,
) -> MemoryPlan:  # fmt: skip
    """The memory plan of a GRPO run (module docstring); the micro-batch's activations are a
    rough bound (every layer's residual stream, MLP and attention scores kept for backward)."""
    limit = device_limit(jax.local_devices()[0]) if limit is None else limit
    c, frac = config, split_fraction(config, model_axis)
    n, item = c.num_params(), np.dtype(c.dtype).itemsize
    slots = width + max_new_tokens
    heads = model_axis if c.n_heads % model_axis == 0 and c.n_kv_heads % model_axis == 0 else 1
    cache = 2 * c.n_layers * generate_batch * c.n_kv_heads * c.head_dim * slots * item / heads
    acts = micro_batch * slots * c.n_layers * (8 * c.d_model + 3 * c.d_ff / model_axis) * item
    acts += micro_batch * c.n_heads / heads * slots * slots * 4 * 2  # one layer's scores
    acts += micro_batch * slots * c.vocab_size * 4 * 2 / model_axis  # logits, log-softmax
    rows = (
        ("masters theta_t", int(4 * n * frac)),
        ("reference theta_0", int(4 * n * frac)),
        ("AdamW moments", int(8 * n * frac)),
        ("gradient accumulator", int(4 * n * frac)),
        ("compute copies", int(2 * item * n * frac)),
        (f"sampling KV cache ({generate_batch} rows)", int(cache)),
        (f"micro-batch activations ({micro_batch} rows)", int(acts)),
    )
    fixes = (
        f"grpo.model_axis (now {model_axis})",
        f"grpo.generate_batch_size (now {generate_batch})",
        f"grpo.micro_batch_size (now {micro_batch})",
        f"task.max_new_tokens (now {max_new_tokens})",
    )
    return MemoryPlan("GRPO", model_axis, model_axis, rows, (), int(HEADROOM * limit[0]),
                      limit[1], fixes=fixes)  # fmt: skip
