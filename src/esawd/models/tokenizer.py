"""Tokenizers and chat templates through transformers, with an assistant prefill.

The Countdown and ProofWriter prompts start the assistant's answer for the model (e.g.
"<think>"); `chat_ids(..., prefill=...)` renders the chat template with that text as the start
of the final assistant message, left open so the model continues it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def load_tokenizer(path: str | os.PathLike, *, gguf_file: str | None = None) -> Any:
    """A transformers tokenizer from a model directory, or from a GGUF file's metadata."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(str(path), **kwargs)


def chat_ids(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    prefill: str | None = None,
) -> list[int]:
    """Token ids of a chat prompt; the model continues `prefill` as the assistant's reply."""
    messages = list(messages)
    if not messages:
        raise ValueError("chat_ids needs at least one message")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    if prefill is not None:
        if messages[-1]["role"] == "assistant":
            raise ValueError("give either a final assistant message or prefill, not both")
        messages.append({"role": "assistant", "content": prefill})
    if messages[-1]["role"] == "assistant":
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, continue_final_message=True, return_dict=True
        )
    else:
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True
        )
    return list(out["input_ids"])
