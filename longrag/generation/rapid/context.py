"""The drafter's context: retrieval over the document's own fixed-size token chunks.

The target reads the whole long context; the drafter reads only the chunks of it that the
question's retrieval ranks best. The context is cut into consecutive ``chunk_tokens``-token
chunks (exact character spans, from the tokenizer's offset mapping), the chunks are scored by an
injected scorer, those under the relevance threshold are dropped, and the best that fit the
budget ``max(budget_tokens, s / budget_ratio)`` are kept and put back in document order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """A run of ``[tok_start, tok_end)`` document tokens covering chars ``[start, end)``."""

    index: int
    tok_start: int
    tok_end: int
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.tok_end - self.tok_start


@dataclass(frozen=True, slots=True)
class RetrievedContext:
    """The drafter's context: selected chunks in document order and their joined text."""

    text: str
    chunks: list[TokenChunk]
    scores: list[float]
    document_tokens: int
    budget_tokens: int
    relevance: list[float] | None = None  # what the threshold applied to, per chunk (None: the scores)

    @property
    def top_relevance(self) -> float | None:
        """The best selected chunk's relevance (the threshold's scale); None when nothing was kept."""
        rel = self.scores if self.relevance is None else self.relevance
        return max(rel) if rel else None

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks


ChunkScorer = Callable[[Sequence[TokenChunk]], Sequence[float]]
"""Scores chunks against the question (higher is better); injected by callers."""


def token_chunks(offsets: Sequence[tuple[int, int]], *, chunk_tokens: int = 512) -> list[TokenChunk]:
    """Split a tokenised text (its ``offset_mapping``) into consecutive, non-overlapping chunks.

    Args:
        offsets: ``(char_start, char_end)`` per token, as a fast tokenizer returns them.
        chunk_tokens: tokens per chunk (the paper uses ~512); the last chunk may be shorter.
    """
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be positive")
    out = []
    for i, s in enumerate(range(0, len(offsets), chunk_tokens)):
        e = min(s + chunk_tokens, len(offsets))
        out.append(TokenChunk(i, s, e, int(offsets[s][0]), int(offsets[e - 1][1])))
    return out


def context_budget(document_tokens: int, *, budget_tokens: int = 4096, budget_ratio: int = 24) -> int:
    """The drafter's token budget: ``max(budget_tokens, document_tokens / budget_ratio)``."""
    return max(int(budget_tokens), math.ceil(document_tokens / max(1, budget_ratio)))


def select_chunks(
    chunks: Sequence[TokenChunk],
    scores: Sequence[float],
    *,
    budget: int,
    threshold: float = 0.3,
    relevance: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the best chunks that fit ``budget`` tokens, in document order.

    Chunks are taken best ``scores`` first; a chunk whose ``relevance`` (default: its score) is
    under ``threshold`` is never taken. A separate relevance lets a rank-only score (e.g. a
    reciprocal-rank fusion, whose values say nothing absolute) order the chunks while the
    threshold stays on a similarity scale (the paper's cosine).
    """
    relevance = scores if relevance is None else relevance
    if not len(chunks) == len(scores) == len(relevance):
        raise ValueError(f"{len(chunks)} chunks but {len(scores)} scores and {len(relevance)} relevances")
    order = sorted(range(len(chunks)), key=lambda i: -float(scores[i]))
    picked: list[int] = []
    used = 0
    for i in order:
        if float(relevance[i]) < threshold:
            continue
        if used + chunks[i].tokens > budget:
            continue
        picked.append(i)
        used += chunks[i].tokens
    return sorted(picked)


def retrieve_context(
    text: str,
    tokenizer: Any,
    scorer: ChunkScorer | Sequence[float],
    *,
    chunk_tokens: int = 512,
    budget_tokens: int = 4096,
    budget_ratio: int = 24,
    threshold: float = 0.3,
    separator: str = "\n\n",
    relevance: ChunkScorer | Sequence[float] | None = None,
) -> RetrievedContext:
    """Build the drafter's context from ``text``: chunk, score, select, restore document order.

    Args:
        text: the long context the target reads.
        tokenizer: the decoder's (fast) tokenizer, used for token chunks and offsets.
        scorer: a callable scoring the chunks, or precomputed scores (one per chunk).
        chunk_tokens: chunk size in decoder tokens (no overlap; capped at the budget).
        budget_tokens: minimum drafter budget; the budget is ``max(budget_tokens, s / budget_ratio)``.
        budget_ratio: the ``24`` in ``s / 24``.
        threshold: chunks whose relevance is under it are dropped (empty result: callers fall
            back to target-only decoding).
        separator: joins non-adjacent chunks.
        relevance: what ``threshold`` applies to, scored like ``scorer`` (default: the scores);
            ``scorer`` then only orders the chunks.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    budget = context_budget(len(offsets), budget_tokens=budget_tokens, budget_ratio=budget_ratio)
    chunks = token_chunks(offsets, chunk_tokens=max(1, min(chunk_tokens, budget)))
    scores = list(scorer(chunks)) if callable(scorer) else list(scorer)
    rel = None if relevance is None else list(relevance(chunks)) if callable(relevance) else list(relevance)
    picked = select_chunks(chunks, scores, budget=budget, threshold=threshold, relevance=rel) if chunks else []
    parts: list[str] = []
    prev = -2
    for i in picked:
        c = chunks[i]
        piece = text[c.start : c.end]
        if parts and i == prev + 1:
            parts[-1] += text[chunks[prev].end : c.start] + piece  # adjacent: keep the original join
        else:
            parts.append(piece)
        prev = i
    return RetrievedContext(
        separator.join(p.strip() for p in parts),
        [chunks[i] for i in picked],
        [float(scores[i]) for i in picked],
        len(offsets),
        budget,
        None if rel is None else [float(rel[i]) for i in picked],
    )
