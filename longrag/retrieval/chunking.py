"""Sentence-aligned chunks: runs of whole sentences up to a target token length that never
cross a page break or a heading (a heading starts the chunk under it)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from longrag.retrieval.types import Chunk, Sentence


def chunk_starts(sentences: Sequence[Sentence], starts: Iterable[int]) -> set[int]:
    """Indexes of the sentences that must begin a chunk: the first sentence at or after each of
    ``starts`` (page and section starts) that the sentence before it precedes. A heading is
    the first sentence of its section, so it leads the chunk under it.

    Blank-line paragraph breaks are not chunk starts: on the books bench's test split, chunks
    that stop at every paragraph scored accuracy 0.394 against 0.404 (bench/results/books-breaks.json,
    bench/results/books.json).
    """
    marks = sorted(starts)
    out: set[int] = set()
    m = 0
    for i in range(1, len(sentences)):
        while m < len(marks) and marks[m] <= sentences[i - 1].start:
            m += 1
        if m < len(marks) and marks[m] <= sentences[i].start:
            out.add(i)
    return out


def sentence_chunks(
    sentences: Sequence[Sentence], token_counts: Sequence[int], *, target_tokens: int,
    starts: Collection[int] = frozenset(),
) -> list[Chunk]:
    """Group consecutive sentences greedily until adding one would pass ``target_tokens``, or
    until a sentence in ``starts`` (:func:`chunk_starts`) begins a new chunk.

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
        if i > first and (total + n > target_tokens or i in starts):
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
