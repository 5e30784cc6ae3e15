"""The seven benchmarks of the paper (Sec. 4): three target tasks trained on (Countdown,
GSM8K, ProofWriter) and four prior tasks that measure forgetting (HellaSwag, PIQA,
ARC-Challenge, MMLU-Pro), with prompts and rewards that mean what the reference's do
(`kschweig/es-awd`, `tasks/` and `prior_tasks/`), safe answer checking and data loading.
Two procedural target tasks need no download: `arithmetic` (word problems with GSM8K's prompt
and reward) and `rules` (ProofWriter-style theories with ProofWriter's), each with a held-out
split that never overlaps its training split (`esawd.tasks.procedural`).

    task = get_task("countdown")
    examples = task.load("test", data_dir="../shared/data")
    generated = get_task("rules").generate(64, seed=0, split="test")   # procedural: no files
    task.reward(completion, examples[0])  # {"reward", "format_reward", "answer_reward"}

Nothing here imports JAX or Flax; tokenizing prompts into batches for the sampler is
`esawd.prompts.encode_prompts`.

See docs/tasks.md for each task's prompt, reward and the few places we differ from the
reference.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from esawd.tasks.arc_challenge import ARCChallenge
from esawd.tasks.arithmetic import Arithmetic
from esawd.tasks.base import Example, Message, Reward, Task
from esawd.tasks.countdown import Countdown
from esawd.tasks.gsm8k import GSM8K
from esawd.tasks.hellaswag import HellaSwag
from esawd.tasks.mmlu_pro import MMLUPro
from esawd.tasks.piqa import PIQA
from esawd.tasks.proofwriter import ProofWriter
from esawd.tasks.rules import Rules

__all__ = [
    "ALL_EXAMPLES",
    "EVAL_SUBSET_SEED",
    "EVAL_SUBSET_SIZE",
    "PRIOR_TASKS",
    "PROCEDURAL_TASKS",
    "TARGET_TASKS",
    "TASK_NAMES",
    "Example",
    "Message",
    "Reward",
    "Task",
    "eval_subset",
    "get_task",
]

_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Countdown(),
        GSM8K(),
        ProofWriter(),
        HellaSwag(),
        PIQA(),
        ARCChallenge(),
        MMLUPro(),
        Arithmetic(),
        Rules(),
    )
}
TASK_NAMES = tuple(_TASKS)
PROCEDURAL_TASKS = tuple(name for name, task in _TASKS.items() if task.procedural)
TARGET_TASKS = tuple(name for name, task in _TASKS.items() if task.is_target)
PRIOR_TASKS = tuple(name for name, task in _TASKS.items() if not task.is_target)

# The reference's forgetting evaluation (evaluation/evaluate_forgetting.py) scores at most
# 2048 examples per task, drawn with random.Random(2357).sample.
EVAL_SUBSET_SIZE = 2048
EVAL_SUBSET_SEED = 2357
# A size meaning "every example" (eval.num_examples=-1: the whole test split, as the
# reference's es.py evaluates during training).
ALL_EXAMPLES = -1

T = TypeVar("T")


def get_task(name: str) -> Task:
    """The task called `name`; raises a ValueError listing the valid names otherwise."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}.") from None


def eval_subset(
    examples: Sequence[T], *, size: int | None = EVAL_SUBSET_SIZE, seed: int = EVAL_SUBSET_SEED
) -> list[T]:
    """The reference's evaluation subset: all examples if size is None, ALL_EXAMPLES or
    >= len, else a seeded random.Random(seed).sample of `size` of them (same indices, same
    order)."""
    if size is None or size == ALL_EXAMPLES or size >= len(examples):
        return list(examples)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    indices = random.Random(seed).sample(range(len(examples)), k=size)
    return [examples[i] for i in indices]
