"""Sentence segmentation with exact character offsets into the parsed text.

The default backend is blingfire (chosen by ``bench/segmenters.py``: best boundary F1 among
blingfire / pysbd / syntok on HotpotQA's gold sentences, and by far the fastest). Text is first
cut at blank lines (paragraphs); sentences longer than ``max_chars`` are split at whitespace so
that no unit exceeds what the embedder can read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from longrag.retrieval.types import Sentence

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")
_NONSPACE = re.compile(r"\S")

SpanFn = Callable[[str], list[tuple[int, int]]]


def _blingfire(text: str) -> list[tuple[int, int]]:
    import blingfire

    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    return [(int(a), int(b)) for a, b in offsets]


def _pysbd(text: str) -> list[tuple[int, int]]:
    import pysbd

    seg = pysbd.Segmenter(language="en", clean=False, char_span=True)
    return [(s.start, s.end) for s in seg.segment(text)]


def _syntok(text: str) -> list[tuple[int, int]]:
    from syntok import segmenter

    spans = []
    for paragraph in segmenter.analyze(text):
        for sentence in paragraph:
            tokens = list(sentence)
            if tokens:
                start = tokens[0].offset
                end = tokens[-1].offset + len(tokens[-1].value)
                spans.append((start, end))
    return spans


BACKENDS: dict[str, SpanFn] = {"blingfire": _blingfire, "pysbd": _pysbd, "syntok": _syntok}


def _paragraphs(text: str) -> Iterator[tuple[int, int]]:
    pos = 0
    for m in _PARAGRAPH.finditer(text):
        yield pos, m.start()
        pos = m.end()
    yield pos, len(text)


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _split_long(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    while end - start > max_chars:
        cut = text.rfind(" ", start + max_chars // 2, start + max_chars)
        if cut <= start:
            cut = start + max_chars
        piece = _trim(text, start, cut)
        if piece:
            yield piece
        start = cut
    piece = _trim(text, start, end)
    if piece:
        yield piece


def split_sentences(text: str, *, backend: str = "blingfire", max_chars: int = 2000) -> list[Sentence]:
    """Sentences as ``[start, end)`` offsets into ``text``; whitespace between them is skipped.

    Args:
        text: the parsed document text.
        backend: one of :data:`BACKENDS`.
        max_chars: longer sentences are cut at whitespace (or hard, without any).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown segmenter {backend!r}; choose from {sorted(BACKENDS)}")
    fn = BACKENDS[backend]
    spans: list[tuple[int, int]] = []
    for p_start, p_end in _paragraphs(text):
        para = text[p_start:p_end]
        if not _NONSPACE.search(para):
            continue
        local = fn(para) or [(0, len(para))]
        # Backends may drop characters between sentences: each sentence runs to the start of
        # the next, then is trimmed, so every non-space character belongs to one sentence.
        starts = sorted(a for a, _ in local)
        starts[0] = 0
        for a, b in zip(starts, [*starts[1:], len(para)]):
            trimmed = _trim(text, p_start + a, p_start + b)
            if trimmed:
                spans.extend(_split_long(text, trimmed[0], trimmed[1], max_chars))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for a, b in spans:  # guard against overlapping spans from a backend
        if merged and a < merged[-1][1]:
            a = merged[-1][1]
            if a >= b:
                continue
        merged.append((a, b))
    return [Sentence(index=i, start=a, end=b) for i, (a, b) in enumerate(merged)]
