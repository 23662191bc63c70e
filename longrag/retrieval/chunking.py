"""Sentence-aligned chunks: runs of whole sentences up to a target token length."""

from __future__ import annotations

from collections.abc import Sequence

from longrag.retrieval.types import Chunk, Sentence


def sentence_chunks(
    sentences: Sequence[Sentence], token_counts: Sequence[int], *, target_tokens: int
) -> list[Chunk]:
    """Group consecutive sentences greedily until adding one would pass ``target_tokens``.

    A sentence longer than the target forms a chunk of its own. Chunks never split a sentence,
    so their offsets are sentence boundaries.
    """
    if len(sentences) != len(token_counts):
        raise ValueError("one token count per sentence is required")
    if target_tokens <= 0:
        raise ValueError("target_tokens must be positive")
    chunks: list[Chunk] = []
    first = 0
    total = 0
    for i, n in enumerate(token_counts):
        if i > first and total + n > target_tokens:
            chunks.append(_make(len(chunks), sentences, first, i - 1))
            first, total = i, 0
        total += n
    if sentences:
        chunks.append(_make(len(chunks), sentences, first, len(sentences) - 1))
    return chunks


def _make(index: int, sentences: Sequence[Sentence], first: int, last: int) -> Chunk:
    return Chunk(
        index=index,
        start=sentences[first].start,
        end=sentences[last].end,
        first_sentence=first,
        last_sentence=last,
    )
