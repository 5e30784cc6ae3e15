"""theta_t of a run directory over training (paper Sec. 5): the checkpoint at t where there
is one; otherwise, for ES, a replay from the nearest earlier checkpoint (or theta_0) with the
seeds and coefficients in `es_log.jsonl`, bitwise equal to what training had.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from esawd import es
from esawd.analysis.errors import AnalysisError
from esawd.rundir import RunDir
from esawd.types import Params


class Thetas:
    """theta_t of one run, for increasing t: checkpoints where saved, ES replay in between.

    `theta0` is the run's anchor as device arrays; `start` the parameters at iteration 0 when
    they differ from it (`awd.anchor`; default: theta0). `get(t)` returns device arrays.
    Asking for increasing iterations replays each ES step once.
    """

    def __init__(self, run: RunDir, theta0: Params, *, method: str, start: Params | None = None):
        self.run = run
        self.theta0 = theta0
        self.start = theta0 if start is None else start
        self.method = method
        self.steps = sorted(run.all_steps())
        self.es_rows = run.es_log.rows() if method == "es" else []
        self._anchor: es.HostAnchor | None = None
        self._current: tuple[int, Params] = (0, self.start)

    def available(self) -> list[int]:
        """Every iteration whose parameters can be had: 0, checkpoints, logged ES steps."""
        logged = [r["iteration"] for r in self.es_rows]
        # Replay needs every row from 1 on; a gap ends what can be replayed.
        replayable = 0
        for t in sorted(logged):
            if t != replayable + 1:
                break
            replayable = t
        return sorted({0, *self.steps, *range(1, replayable + 1)})

    def get(self, t: int) -> Params:
        if t == 0:
            return self.start
        if t in self.steps:
            params, _ = self.run.restore(t, self.theta0)
            self._current = (t, params)
            return params
        if self.method != "es":
            raise AnalysisError(
                f"{self.run.root} has no checkpoint at iteration {t} ({self.method} runs are "
                f"evaluated at checkpoints only: {self.steps})."
            )
        start = self._current if self._current[0] <= t else (0, self.start)
        earlier = [c for c in self.steps if start[0] < c < t]
        if earlier:
            start = (earlier[-1], self.run.restore(earlier[-1], self.theta0)[0])
        if self._anchor is None:
            self._anchor = es.host_anchor(jax.tree.map(np.asarray, self.theta0))
        from esawd.es.method import replay  # here: the training loop imports this package

        params = replay(self.theta0, self.es_rows, upto=t, anchor=self._anchor, start=start)
        self._current = (t, params)
        return params


def select_iterations(
    available: Sequence[int], checkpoints: Sequence[int], *, stride: int, explicit: Sequence[int]
) -> list[int]:
    """The iterations to evaluate: the explicit ones if given; else 0, the last available and
    either every multiple of `stride` or (stride 0) every checkpoint."""
    available = sorted(available)
    if explicit:
        missing = sorted(set(explicit) - set(available))
        if missing:
            raise AnalysisError(
                f"iterations {missing} cannot be evaluated: this run has checkpoints or "
                f"ES-log rows for {format_ranges(available)}."
            )
        return sorted(set(explicit))
    picked = checkpoints if stride == 0 else [t for t in available if t % stride == 0]
    return sorted({0, available[-1], *picked})


def format_ranges(xs: Sequence[int]) -> str:
    """Iterations as text for messages: "0..10" for a run of three or more, else a list."""
    xs = sorted(xs)
    if not xs:
        return "nothing"
    if xs == list(range(xs[0], xs[-1] + 1)) and len(xs) > 2:
        return f"{xs[0]}..{xs[-1]}"
    return ", ".join(map(str, xs))
