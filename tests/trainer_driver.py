"""Run experiments.run with the test reward patched in (for subprocess tests).

python tests/trainer_driver.py --config configs/default.py --config.workdir=... [...]
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def text_reward(self, completion, example):
    """A deterministic reward that varies with the generated text (random tiny models score
    0 on the real tasks, which would leave ES without a signal to test)."""
    del self, example
    r = (sum(map(ord, completion)) % 101) / 100.0
    return {"reward": r, "format_reward": float(r > 0.5), "answer_reward": r}


def patch_reward():
    from esawd.tasks.countdown import Countdown

    Countdown.reward = text_reward


if __name__ == "__main__":
    patch_reward()
    from experiments import run

    run.run()
