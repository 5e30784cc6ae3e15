"""A task's examples, prompts and rewards for training: what every method shares.

`load_examples` gives the training prompts and held-out examples of the target task,
`encode` turns examples into left-padded prompt ids, `score` decodes generated tokens and
rewards them on the host, `reward_metrics` summarises rewards for the metrics row, and
`heldout_accuracy` measures greedy accuracy on held-out examples during training (the
forgetting analysis of other tasks is `esawd.analysis`; population fitness is `esawd.es`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from esawd import prompts, sampling, tasks
from esawd.settings import ConfigError
from esawd.types import Params


def load_examples(
    task: Any,
    *,
    data_dir: str,
    num_train: int,
    eval_size: int,
    seed: int,
    train_split: str = "train",
    eval_split: str = "test",
) -> tuple[list, list]:
    """Training prompts and held-out evaluation examples of the target task, which `task`
    names as `tasks.resolve_task` reads it (a name, a TaskSpec, the `task` settings).

    A task setting that cannot be resolved or a bad row of a user task's data is a
    ConfigError (raised before any model is loaded)."""
    try:
        return _load_examples(
            tasks.resolve_task(task), data_dir=data_dir, num_train=num_train,
            eval_size=eval_size, seed=seed, train_split=train_split, eval_split=eval_split,
        )  # fmt: skip
    except (tasks.TaskSpecError, tasks.TaskDataError) as err:
        raise ConfigError(str(err)) from None


def _load_examples(
    task: tasks.Task, *, data_dir, num_train, eval_size, seed, train_split, eval_split
) -> tuple[list, list]:
    if task.generated(data_dir):
        # Generated: the held-out split never shares a problem with the training split.
        train = task.generate(num_train, seed=seed, split="train")
        return train, task.generate(eval_size, seed=seed, split="test")
    train = task.load(train_split, data_dir or None)
    held_out = task.load(eval_split, data_dir or None)
    if len(train) < num_train:
        raise ConfigError(
            f"task.num_train={num_train} but {getattr(task, 'path', task.name)} has "
            f"{len(train)} rows in its {train_split!r} split."
        )
    held_out = tasks.eval_subset(held_out, size=eval_size) if eval_size else []
    return train[:num_train], held_out


def encode(task, examples: Sequence[dict], tokenizer, *, bucket: int = 64) -> prompts.PromptBatch:
    """Left-padded prompt ids and mask [B, T] through the tokenizer's chat template."""
    conversations = [task.messages(e) for e in examples]
    return prompts.encode_prompts(conversations, tokenizer, pad_to_multiple_of=bucket)


def score(task, tokenizer, tokens: np.ndarray, lengths: np.ndarray, examples) -> dict:
    """Decode each row and score it with the task's reward: arrays [B] per component."""
    rows = [tokens[i, : int(n)] for i, n in enumerate(lengths)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    rewards = [task.reward(text, ex) for text, ex in zip(texts, examples, strict=True)]
    out = {k: np.array([r[k] for r in rewards], np.float64) for k in rewards[0]}
    out["accuracy"] = (out["answer_reward"] > 0).astype(np.float64)
    out["tokens"] = np.asarray(lengths, np.float64)
    return out


def reward_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics row's reward summary of `score`'s arrays (or of per-member means)."""
    r = np.asarray(scores["reward"], np.float64).ravel()
    return {
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std()),
        "reward_min": float(r.min()),
        "reward_max": float(r.max()),
        "format_reward": float(scores["format_reward"].mean()),
        "answer_reward": float(scores["answer_reward"].mean()),
        "accuracy": float(scores["accuracy"].mean()),
        "tokens_mean": float(scores["tokens"].mean()),
        "tokens_max": float(scores["tokens"].max()),
    }


def heldout_accuracy(
    config, params: Params, tokenizer, task, examples, *, max_new_tokens: int, batch_size: int
) -> dict[str, Any]:
    """Greedy accuracy, format rate and reward of `params` on held-out examples, and which
    examples it got right (`correct`, 0/1 in example order, for paired comparisons)."""
    parts = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = encode(task, chunk, tokenizer)
        tokens, lengths = sampling.generate(
            config, params, batch.ids, batch.mask, max_new_tokens=max_new_tokens
        )
        parts.append(score(task, tokenizer, *jax.device_get((tokens, lengths)), chunk))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {
        "accuracy": float(merged["accuracy"].mean()),
        "format_rate": float((merged["format_reward"] > 0).mean()),
        "reward": float(merged["reward"].mean()),
        "tokens": float(merged["tokens"].mean()),
        "num_examples": len(examples),
        "correct": [int(c) for c in merged["accuracy"]],
    }
