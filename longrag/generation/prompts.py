"""Prompt construction for grounded answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SYSTEM = (
    "You answer questions about documents. Use only the given context. "
    "Reply with the shortest exact answer taken from the context (a few words), "
    "not a full sentence. If the context does not contain the answer, reply: unknown"
)


EXAMPLE_CONTEXT = (
    "[1] The carriage stopped before Fernhill Lodge, which Mr. Harland had taken for the summer.\n\n"
    "[2] Mr. Harland's sister, Mrs. Oakes, had come down from Bath with her two daughters."
)
EXAMPLE = ("What house does Mr. Harland take for the summer?", "Fernhill Lodge")


def context_block(passages: Sequence[str]) -> str:
    """The passages, numbered ``[1]``, ``[2]``, ... as in the worked example."""
    kept = [p.strip() for p in passages if p.strip()]
    return "\n\n".join(f"[{i}] {p}" for i, p in enumerate(kept, 1))


def _user(question: str, context: str) -> str:
    return f"Context:\n{context}\n\nQuestion: {question.strip()}\nAnswer:"


def answer_messages(question: str, context: str) -> list[dict[str, str]]:
    """System instruction, one worked example (an invented passage: a short answer copied from
    the context), then the question over its context."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _user(EXAMPLE[0], EXAMPLE_CONTEXT)},
        {"role": "assistant", "content": EXAMPLE[1]},
        {"role": "user", "content": _user(question, context)},
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
