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
    context. (item, option) pairs are sorted by length so that batches pad little."""
    pairs = []
    for i, item in enumerate(items):
        context = _encode(tokenizer, item.context)
        if not context:
            raise ValueError(f"item {i} has an empty context; every option needs one to follow")
        for j, option in enumerate(item.options):
            cont = _encode(tokenizer, " " + option)
            if not cont:
                raise ValueError(f"item {i} option {j} ({option!r}) has no tokens")
            pairs.append((i, j, context, cont))
    order = sorted(range(len(pairs)), key=lambda k: (len(pairs[k][2]), len(pairs[k][3])))
    scores = [np.zeros(len(item.options)) for item in items]
    for start in range(0, len(order), batch_size):
        chunk = [pairs[k] for k in order[start : start + batch_size]]
        width = _ceil(max(len(p[2]) for p in chunk), _PROMPT_BUCKET)
        cwidth = _ceil(max(len(p[3]) for p in chunk), _OPTION_BUCKET)
        rows = batch_size  # a fixed batch (padded with copies of its last pair) compiles once
        ids = np.full((rows, width), pad_id, np.int32)
        mask = np.zeros((rows, width), bool)
        cont = np.full((rows, cwidth), pad_id, np.int32)
        cmask = np.zeros((rows, cwidth), bool)
        for r in range(rows):
            _, _, ctx, c = chunk[min(r, len(chunk) - 1)]
            ids[r, width - len(ctx) :] = ctx
            mask[r, width - len(ctx) :] = True
            cont[r, : len(c)] = c
            cmask[r, : len(c)] = True
        lp = sampling.sequence_log_probs(config, params, ids, mask, cont, cmask)
        lp = np.asarray(es.host_value(lp))
        for r, (i, j, _, _) in enumerate(chunk):
            scores[i][j] = float(np.where(cmask[r], lp[r], 0.0).sum())
    return scores


def choice_accuracy(
    config, params, tokenizer, task, examples: Sequence[dict], *, batch_size: int
) -> dict[str, Any]:
    """Accuracy of `params` on `examples` by option log-likelihood per character (lm-eval's
    acc_norm), and which examples it got right (`correct`, 0/1 in example order)."""
    items = [task.choices(e) for e in examples]
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    scores = option_scores(config, params, tokenizer, items, batch_size=batch_size, pad_id=pad_id)
    correct = []
    for item, s in zip(items, scores, strict=True):
        per_char = s / np.array([max(len(" " + o), 1) for o in item.options], float)
        correct.append(int(int(np.argmax(per_char)) == item.answer))
    return {
        "accuracy": float(np.mean(correct)) if correct else 0.0,
        "num_examples": len(items),
        "num_options": float(np.mean([len(item.options) for item in items])) if items else 0.0,
        "scoring": "likelihood",
        "correct": correct,
    }
