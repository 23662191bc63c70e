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


def chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A chat prompt as text, ending where the assistant's reply starts (the model's chat
    template; plain paragraphs when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n"


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt ending where the assistant's reply starts."""
    return list(tokenizer(chat_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


def encode_halves(tokenizer: Any, text: str, cut: int) -> tuple[list[int], list[int]]:
    """Token ids of ``text[:cut]`` and ``text[cut:]``, tokenized separately, so that the KV cache
    of a head (e.g. instructions + document) stays valid for any tail (e.g. a question)."""
    enc = tokenizer([text[:cut], text[cut:]], add_special_tokens=False)["input_ids"]
    return list(enc[0]), list(enc[1])


def prompt_overhead(tokenizer: Any, question: str) -> int:
    """Tokens the prompt takes besides the context."""
    return len(encode_chat(tokenizer, answer_messages(question, "")))
