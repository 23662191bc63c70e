"""Prompt construction for grounded answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SYSTEM = (
    "You answer questions about documents. Use only the given context. "
    "Reply with the shortest exact answer taken from the context (a few words), "
    "not a full sentence. If the context does not contain the answer, reply: unknown"
)


def context_block(passages: Sequence[str]) -> str:
    return "\n\n".join(p.strip() for p in passages if p.strip())


def answer_messages(question: str, context: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question.strip()}\nAnswer:"},
    ]


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt ending where the assistant's reply starts."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_overhead(tokenizer: Any, question: str) -> int:
    """Tokens the prompt takes besides the context."""
    return len(encode_chat(tokenizer, answer_messages(question, "")))
