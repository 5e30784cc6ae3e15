"""The devices a run uses: CPU devices and several processes, set up before any JAX work."""

from __future__ import annotations

import os
import platform

import jax

from esawd.settings import ConfigError


def set_cpu_devices(n: int) -> None:
    """Split the CPU backend into n JAX devices (n=0 keeps JAX's default); call before any
    JAX computation, since the backend reads the setting once, when it starts."""
    if n < 0:
        raise ConfigError(f"distributed.cpu_devices={n} is invalid: 0 (default) or more.")
    if not n:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:  # the backend is already running
        raise ConfigError(
            f"distributed.cpu_devices={n} came too late: JAX's backends are already running. "
            "Set it before the first JAX computation (or set JAX_NUM_CPU_DEVICES instead)."
        ) from e


def initialize(
    *,
    enabled: bool,
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    cpu_devices: int,
) -> None:
    """`set_cpu_devices`, then `jax.distributed.initialize` when `enabled` (empty/negative
    values are auto-detected: SLURM, Open MPI, ...)."""
    set_cpu_devices(cpu_devices)
    if enabled:
        jax.distributed.initialize(
            coordinator_address=coordinator_address or None,
            num_processes=num_processes or None,
            process_id=None if process_id < 0 else process_id,
        )


def machine() -> str:
    """Where this ran, for result tables: the CPU model, its cores, and the accelerator."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    accel = "" if device.platform == "cpu" else f", {jax.device_count()} x {device.device_kind}"
    return f"{cpu}, {cores} cores{accel}"
