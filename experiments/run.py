"""Train with ES + AWD (or GRPO, when the config says so) from an ml-collections config.

    python -m experiments.run --config configs/default.py [--config.key=value ...]

Re-running the same command on an existing workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

import jax
from absl import app, logging
from ml_collections import config_flags

from esawd import grpo, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


def settings_from_config(c) -> trainer.Settings:
    """Unpack an ml-collections config into the trainer's typed settings."""
    if not c.workdir:
        raise trainer.ConfigError("workdir is empty: pass --config.workdir=DIR (the run dir).")
    return trainer.Settings(
        workdir=c.workdir,
        model=trainer.ModelSettings(**c.model.to_dict()),
        task=trainer.TaskSettings(**c.task.to_dict()),
        es=trainer.ESSettings(**c.es.to_dict()),
        awd=trainer.AWDSettings(**c.awd.to_dict()),
        eval=trainer.EvalSettings(**c.eval.to_dict()),
        checkpoint_interval=c.checkpoint.interval,
        checkpoint_max_to_keep=c.checkpoint.max_to_keep,
        log=trainer.LogSettings(**c.log.to_dict()),
        export=c.export,
    )


def grpo_settings_from_config(c) -> grpo.Settings:
    """Unpack an ml-collections GRPO config into `esawd.grpo`'s typed settings."""
    if not c.workdir:
        raise trainer.ConfigError("workdir is empty: pass --config.workdir=DIR (the run dir).")
    return grpo.Settings(
        workdir=c.workdir,
        model=trainer.ModelSettings(**c.model.to_dict()),
        task=trainer.TaskSettings(**c.task.to_dict()),
        grpo=grpo.GRPOSettings(**c.grpo.to_dict()),
        eval=trainer.EvalSettings(**c.eval.to_dict()),
        checkpoint_interval=c.checkpoint.interval,
        checkpoint_max_to_keep=c.checkpoint.max_to_keep,
        log=trainer.LogSettings(**c.log.to_dict()),
        export=c.export,
    )


def set_cpu_devices(n: int) -> None:
    """Split the CPU backend into n JAX devices (n=0 keeps JAX's default); call before any
    JAX computation, since the backend reads the setting once, when it starts."""
    if n < 0:
        raise trainer.ConfigError(f"distributed.cpu_devices={n} is invalid: 0 (default) or more.")
    if not n:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:  # the backend is already running
        raise trainer.ConfigError(
            f"distributed.cpu_devices={n} came too late: JAX's backends are already running. "
            "Set it before the first JAX computation (or set JAX_NUM_CPU_DEVICES instead)."
        ) from e


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    config = _CONFIG.value
    try:
        set_cpu_devices(config.get("distributed", {}).get("cpu_devices", 0))
        if "distributed" in config and config.distributed.enabled:
            d = config.distributed
            jax.distributed.initialize(
                coordinator_address=d.coordinator_address or None,
                num_processes=d.num_processes or None,
                process_id=None if d.process_id < 0 else d.process_id,
            )
        if config.method not in ("es", "grpo"):
            raise trainer.ConfigError(f"method={config.method!r} is unknown; use 'es' or 'grpo'.")
        if config.method == "grpo":
            grpo.train(grpo_settings_from_config(config), config_dict=config.to_dict())
        else:
            trainer.train(settings_from_config(config), config_dict=config.to_dict())
    except trainer.ConfigError as e:
        sys.exit(f"config error: {e}")


def run() -> None:
    """Entry point: absl's flag parsing, with bad config keys reported in one line."""
    try:
        app.run(main)
    except (AttributeError, KeyError) as e:  # ml-collections: unknown key, "Did you mean ..."
        sys.exit(f"config error: {str(e).strip(chr(39))}".replace("\\n", " "))


if __name__ == "__main__":
    run()
