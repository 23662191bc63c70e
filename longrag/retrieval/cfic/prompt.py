"""What the model reads: the extraction prompt, and the regions of a document too long for it.

The prompt is an instruction + the document + the question in the model's chat template, ending
where the evidence starts. It is cut where the document ends, so the head (instructions +
document) is the same for every question on that document and its KV cache can be reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from longrag.generation.prompts import chat_text, encode_halves
from longrag.retrieval.types import Sentence

SYSTEM = (
    "You extract evidence from a document. Copy, word for word, the sentence or consecutive "
    "sentences of the document that answer the question, and nothing else. If the document "
    "does not answer the question, reply with nothing."
)
REGION_SEPARATOR = "\n\n[...]\n\n"


def evidence_messages(document: str, question: str) -> list[dict[str, str]]:
    """The chat messages asking for verbatim evidence from ``document``."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Document:\n{document}\n\nQuestion: {question.strip()}\n"
                                    "Copy the evidence from the document verbatim."},
    ]


def prompt_text(tokenizer: Any, document: str, question: str) -> str:
    """The chat prompt ending where the evidence starts (also used by the trainer)."""
    return chat_text(tokenizer, evidence_messages(document, question))


def split_prompt(tokenizer: Any, document: str, question: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt, cut where the document ends.

    The head (instructions + document) does not depend on the question, so its KV cache can be
    reused by every question on the same document; the two halves are always tokenized
    separately so a cached head and a fresh one give the same ids.
    """
    prompt = prompt_text(tokenizer, document, question)
    marker = "Document:\n" + document
    cut = prompt.find(marker)
    return encode_halves(tokenizer, prompt, cut + len(marker) if cut >= 0 else 0)


def select_regions(
    lengths: Sequence[int], anchors: Sequence[int], *, budget: int, regions: int
) -> list[tuple[int, int]]:
    """Sentence ranges ``[first, last]`` around the best anchors, within a token budget.

    Each region grows around its anchor up to ``budget // regions`` tokens; anchors already
    covered are skipped; regions are merged when they touch and returned in document order.
    """
    n = len(lengths)
    if n == 0:
        return []
    per = max(1, budget // max(1, regions))
    chosen: list[tuple[int, int]] = []
    used = 0
    covered: set[int] = set()
    for a in anchors:
        if a in covered or not 0 <= a < n:
            continue
        room = min(per, budget - used)
        if room <= 0:
            break
        lo = hi = a
        size = lengths[a]
        while True:
            grown = False
            for side in (1, -1):
                j = hi + 1 if side == 1 else lo - 1
                if 0 <= j < n and j not in covered and size + lengths[j] <= room:
                    size += lengths[j]
                    lo, hi = min(lo, j), max(hi, j)
                    grown = True
            if not grown:
                break
        chosen.append((lo, hi))
        covered.update(range(lo, hi + 1))
        used += size
        if used >= budget or len(chosen) >= regions:
            break
    chosen.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in chosen:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def bm25_anchors(text: str, sentences: Sequence[Sentence], question: str) -> list[int]:
    """Sentence indices ranked by BM25 against the question (the anchors when none are given)."""
    import numpy as np

    from longrag.retrieval.bm25 import BM25Index

    index = BM25Index([s.index for s in sentences], [text[s.start : s.end] for s in sentences])
    scores = index.scores(question)
    return [sentences[int(p)].index for p in np.argsort(-scores, kind="stable")]
