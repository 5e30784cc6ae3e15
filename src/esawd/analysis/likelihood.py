"""Prior-task accuracy by option log-likelihood, the way lm-evaluation-harness scores small
models: no generation; the model reads a plain-text context and each option after it, and the
option with the highest log-likelihood per character is its answer (`acc_norm`).

Why, next to the paper's generative protocol: a 135M model's generated PIQA answers are mostly
"1." whatever the question (docs/results.md, "The three findings"), so generated accuracy
sits near chance and moves with the way an answer starts, not with what the model knows.
Option likelihoods measure the knowledge a prior task probes even when the model cannot
follow the answer format, and every example gives a paired result at t = 0 and t = T.

Rows (in `forgetting.jsonl`, task `<name>:ll`, see `forgetting.analyze_run`) keep
`correct` per example, as generated rows do, for `stats.paired_difference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from esawd import es, sampling
from esawd.tasks.base import Choices

SUFFIX = ":ll"  # forgetting.jsonl task key of a likelihood-scored task: "piqa:ll"
_PROMPT_BUCKET = 32  # widths padded to multiples, so a few shapes compile
_OPTION_BUCKET = 16


def row_key(task: str) -> str:
    """The forgetting.jsonl task name of `task` scored by likelihood."""
    return task + SUFFIX


def base_task(key: str) -> str:
    """`piqa` for `piqa:ll`, a generated task's name unchanged."""
    return key[: -len(SUFFIX)] if key.endswith(SUFFIX) else key


def _ceil(n: int, k: int) -> int:
    return -(-n // k) * k


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def option_scores(
    config, params, tokenizer, items: Sequence[Choices], *, batch_size: int, pad_id: int = 0
) -> list[np.ndarray]:
    """Per item, the summed log-likelihood of each option (read as " " + option) after the
    context (`sampling.option_log_probs`: each context runs once, its options share its KV
    cache). Items are sorted by context length so that batches pad little; a batch holds
    batch_size // (most options) items, at least one."""
    encoded = []
    for i, item in enumerate(items):
        context = _encode(tokenizer, item.context)
        if not context:
            raise ValueError(f"item {i} has an empty context; every option needs one to follow")
        options = []
        for j, option in enumerate(item.options):
            options.append(_encode(tokenizer, " " + option))
            if not options[-1]:
                raise ValueError(f"item {i} option {j} ({option!r}) has no tokens")
        encoded.append((context, options))
    scores = [np.zeros(len(item.options)) for item in items]
    if not items:
        return scores
    most = max(len(item.options) for item in items)
    per_batch = max(1, batch_size // most)  # a fixed item count: a few shapes compile
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        chunk += chunk[-1:] * (per_batch - len(chunk))  # padded with copies of its last item
        width = _ceil(max(len(encoded[i][0]) for i in chunk), _PROMPT_BUCKET)
        cwidth = _ceil(max(len(o) for i in chunk for o in encoded[i][1]), _OPTION_BUCKET)
        ids = np.full((per_batch, width), pad_id, np.int32)
        mask = np.zeros((per_batch, width), bool)
        cont = np.full((per_batch, most, cwidth), pad_id, np.int32)
        cmask = np.zeros((per_batch, most, cwidth), bool)
        for r, i in enumerate(chunk):
            ctx, options = encoded[i]
            ids[r, width - len(ctx) :] = ctx
            mask[r, width - len(ctx) :] = True
            for j, c in enumerate(options):
                cont[r, j, : len(c)] = c
                cmask[r, j, : len(c)] = True
        lp = sampling.option_log_probs(config, params, ids, mask, cont, cmask)
        sums = np.asarray(es.host_value(lp)).sum(axis=-1)  # [per_batch, most], 0 on padding
        for r, i in enumerate(chunk[: len(order) - start]):
            scores[i] = sums[r, : len(items[i].options)].astype(np.float64)
    return scores


def best_option(item: Choices, scores: np.ndarray) -> int:
    """acc_norm's answer: the option with the highest log-likelihood per character of
    " " + option, given its summed log-likelihoods `scores`."""
    return int(np.argmax(scores / np.array([len(" " + o) for o in item.options], float)))


def choice_accuracy(
    config, params, tokenizer, task, examples: Sequence[dict], *, batch_size: int
) -> dict[str, Any]:
    """Accuracy of `params` on `examples` by option log-likelihood per character (lm-eval's
    acc_norm), and which examples it got right (`correct`, 0/1 in example order)."""
    items = [task.choices(e) for e in examples]
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    scores = option_scores(config, params, tokenizer, items, batch_size=batch_size, pad_id=pad_id)
    correct = [
        int(best_option(item, s) == item.answer) for item, s in zip(items, scores, strict=True)
    ]
    return {
        "accuracy": float(np.mean(correct)) if correct else 0.0,
        "num_examples": len(items),
        "num_options": float(np.mean([len(item.options) for item in items])) if items else 0.0,
        "scoring": "likelihood",
        "correct": correct,
    }
