"""Plain data passed between retrieval components."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open character range ``[start, end)`` of a document's parsed text."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sentence:
    index: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole sentences ``[first_sentence, last_sentence]`` covering ``[start, end)``."""

    index: int
    start: int
    end: int
    first_sentence: int
    last_sentence: int


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved unit with its exact text and score."""

    doc_id: str
    start: int
    end: int
    text: str
    score: float
    chunk_id: int = -1
