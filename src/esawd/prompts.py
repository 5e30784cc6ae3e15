"""Chat-template tokenization of task prompts into left-padded batches for the sampler.

Kept out of `esawd.tasks` so that rewards, data loading and prompt rendering import no JAX:
this module needs the tokenizer helpers of `esawd.models` and `esawd.sampling.left_pad`.

    batch = encode_prompts([task.messages(e) for e in examples[:8]], tokenizer)  # ids, mask

The reference (`kschweig/es-awd`, `tasks/*/data.py`) renders each prompt with
`tokenizer.apply_chat_template` (continuing the assistant prefill where there is one) and
tokenizes the text. Here the tokens come from `apply_chat_template(..., tokenize=True)`, which
does not add special tokens a second time: for tokenizers that prepend BOS (Llama 3) the
reference's `tokenizer(rendered)` produced a doubled BOS; for ChatML tokenizers (Qwen, SmolLM2)
both give the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from esawd.models.tokenizer import chat_ids
from esawd.sampling import left_pad
from esawd.tasks import Message


class PromptBatch(NamedTuple):
    """Left-padded prompt tokens: ids [B, T] int32 and mask [B, T] bool (True on real tokens)."""

    ids: np.ndarray
    mask: np.ndarray

    @property
    def width(self) -> int:
        """The longest prompt's length: the generation pads the prompts to it (bucket=1)."""
        return int(np.asarray(self.mask).sum(axis=1).max())


def prompt_token_ids(messages: Sequence[Message], tokenizer: Any) -> list[int]:
    """Token ids of one conversation; a final assistant message is continued, not closed."""
    if not messages:
        raise ValueError("A prompt needs at least one message.")
    return chat_ids(tokenizer, [dict(m) for m in messages])


def encode_prompts(
    conversations: Sequence[Sequence[Message]],
    tokenizer: Any,
    *,
    pad_id: int | None = None,
    pad_to_multiple_of: int = 1,
    max_length: int | None = None,
) -> PromptBatch:
    """Left-padded ids [B, T] int32 and mask [B, T] bool for a batch of chat prompts."""
    if not conversations:
        raise ValueError("encode_prompts needs at least one conversation.")
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    rows = [prompt_token_ids(messages, tokenizer) for messages in conversations]
    longest = max(len(r) for r in rows)
    if max_length is not None and longest > max_length:
        i = max(range(len(rows)), key=lambda k: len(rows[k]))
        raise ValueError(
            f"Prompt {i} has {longest} tokens, more than max_length={max_length}; raise "
            "max_length or drop the example (prompts are never truncated)."
        )
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None)
        pad_id = 0 if pad_id is None else int(pad_id)
    # Bucketed lengths keep the number of distinct jit shapes small.
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids, mask = left_pad(rows, pad_id=pad_id, length=width)  # [B, T] each
    return PromptBatch(ids=ids, mask=mask)
