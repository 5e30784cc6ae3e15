"""`train(settings)`: the run a config describes, with the method it names.

A new method is a class with the parts `esawd.loop.Method` lists, added to `METHODS` and to
`esawd.settings.METHOD_SECTIONS` (with its settings dataclass).
"""

from __future__ import annotations

from esawd import grpo, loop
from esawd.es.method import ESMethod
from esawd.settings import RunSettings
from esawd.types import Params

METHODS = {"es": ESMethod, "grpo": grpo.GRPOMethod}


def train(s: RunSettings) -> Params:
    """Run (or resume) the run `s` describes; returns the final parameters."""
    return loop.train(s, METHODS[s.method](s))
