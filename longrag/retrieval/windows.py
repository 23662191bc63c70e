"""Sentence windows: the best sentences of the retrieved chunks, each with its neighbours.

A chunk that holds the answer usually holds a hundred other words too, and a small decoder
reads them all. Windows keep the prompt to what the question is about:

1. Split the candidate chunks (the retriever's top hits, a deeper pool than the prompt takes)
   into their sentences.
2. Rank the sentences twice against the question, by dense cosine (the embedder) and by BM25
   (over the candidates), and fuse the two rankings (reciprocal rank fusion). A sentence under
   a heading is ranked as "heading path. sentence", as the chunks are (docs/situated.md).
3. Take the best ``top`` sentences, each widened by ``radius`` sentences on either side (never
   across a blank-line paragraph break), merge windows that touch, and order them best first.

Each window is a :class:`Hit` whose offsets index the document's parsed text exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from longrag.retrieval.bm25 import BM25Index
from longrag.retrieval.fusion import reciprocal_rank_fusion
from longrag.retrieval.types import Hit, Sentence


@dataclass(frozen=True, slots=True)
class WindowConfig:
    top: int = 12  # sentences kept (before widening); Settings.window_top
    radius: int = 1  # neighbours on each side of a kept sentence; Settings.window_radius
    rrf_k: int = 60


def sentence_windows(
    question: str,
    hits: Sequence[Hit],
    *,
    sentences_of: Callable[[str], Sequence[Sentence]],
    text_of: Callable[[str], str],
    encode: Callable[[Sequence[str]], np.ndarray],
    config: WindowConfig = WindowConfig(),
    section_of: Callable[[str, int], str] | None = None,
) -> list[Hit]:
    """Windows around the sentences of ``hits`` that best match ``question`` (best first).

    ``section_of(doc_id, offset)`` gives the heading path at an offset (``""``: none)."""
    # 1. the candidates: every sentence inside a hit, once
    cands: list[tuple[str, Sentence]] = []
    seen: set[tuple[str, int]] = set()
    for h in hits:
        for s in sentences_of(h.doc_id):
            if s.start >= h.start and s.end <= h.end and (h.doc_id, s.index) not in seen:
                seen.add((h.doc_id, s.index))
                cands.append((h.doc_id, s))
    if not cands:
        return list(hits)
    texts = [text_of(d)[s.start : s.end] for d, s in cands]
    if section_of is not None:
        texts = [f"{p}. {t}" if (p := section_of(d, s.start)) else t for (d, s), t in zip(cands, texts)]
    # 2. dense and lexical rankings of the candidates, fused
    vecs = encode([question, *texts])
    dense = [int(i) for i in np.argsort(-(vecs[1:] @ vecs[0]), kind="stable")]
    lexical = [h.id for h in BM25Index(list(range(len(cands))), texts).search(question, len(cands))]
    fused = reciprocal_rank_fusion([dense, lexical], k=config.rrf_k)
    # 3. widen the best sentences, merge touching windows
    windows: list[tuple[str, int, int, float]] = []  # (doc, first sentence, last sentence, score)
    for i, score in fused[: config.top]:
        doc, s = cands[i]
        sents = sentences_of(doc)
        text = text_of(doc)
        first = last = s.index
        for _ in range(config.radius):
            if first > 0 and "\n\n" not in text[sents[first - 1].end : sents[first].start]:
                first -= 1
            if last + 1 < len(sents) and "\n\n" not in text[sents[last].end : sents[last + 1].start]:
                last += 1
        windows.append((doc, first, last, score))
    merged: list[list] = []  # one sweep in document order: overlapping or adjacent windows join
    for doc, first, last, score in sorted(windows):
        if merged and merged[-1][0] == doc and first <= merged[-1][2] + 1:
            merged[-1][2], merged[-1][3] = max(merged[-1][2], last), max(merged[-1][3], score)
        else:
            merged.append([doc, first, last, score])
    out = []
    for doc, first, last, score in sorted(merged, key=lambda m: -m[3]):
        sents = sentences_of(doc)
        start, end = sents[first].start, sents[last].end
        out.append(Hit(doc, start, end, text_of(doc)[start:end], float(score)))
    return out
