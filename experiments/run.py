"""Train with ES + AWD (or GRPO, when the config says so) from an ml-collections config.

    python -m experiments.run --config configs/default.py [--config.key=value ...]

Re-running the same command on a workdir resumes it. Keys and defaults: `esawd.settings`.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from esawd import devices, settings
from esawd.train import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    try:
        s = settings.from_config(_CONFIG.value)
        if s.distributed is not None:
            devices.initialize(**dataclasses.asdict(s.distributed))
        train(s)
    except settings.ConfigError as e:
        sys.exit(f"config error: {e}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad config key (ml-collections: "Did you mean ...") in one
    line. Only parsing is guarded: errors of the run itself keep their traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as e:
        sys.exit(f"config error: {str(e).strip(chr(39))}".replace("\\n", " "))


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
