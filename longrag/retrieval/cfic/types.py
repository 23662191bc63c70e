"""Plain data of an extraction: its options, the prefilled prompt it branches from, its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from longrag.retrieval.cfic.trie import SentenceTrie, Variant
from longrag.retrieval.types import Sentence

# (visible sentence index, the tokenisation it starts with, log-prob of the decoded prefix)
Branch = tuple[int, Variant, float]
# (first visible sentence, last visible sentence, P(end of evidence) after the last one)
SpanEnd = tuple[int, int, float]


@dataclass(frozen=True, slots=True)
class CficOptions:
    """Tunables of one extraction.

    Attributes:
        top_k: spans to return (start tokens / candidates explored).
        method: ``"prefix"`` (constrained sentence-prefix decoding) or ``"likelihood"``
            (length-normalised log-likelihood of whole candidate sentences).
        max_span_sentences: longest span, in sentences.
        max_span_words: longest span, in words (the first sentence always counts).
        no_evidence_threshold: P(end) before any evidence token above which nothing is returned
            (``None`` or >= 1: never).
        doc_tokens: most document tokens shown to the model (None: the model's window minus
            the prompt and room for a span); longer documents are cut to regions around the
            anchors (a CPU budget can be set here).
        regions: how many regions a long document is cut into (each as large as the budget
            allows).
        batch_size: branches fed together through a copy of the cache.
        score_candidates: for ``method="likelihood"``, score only these many of the anchors
            (0: every sentence in the prompt).
        score_tokens: tokens of each candidate sentence read by the likelihood scorer.
    """

    top_k: int = 3
    method: str = "likelihood"
    max_span_sentences: int = 4
    max_span_words: int = 256
    no_evidence_threshold: float | None = 0.5
    doc_tokens: int | None = None
    regions: int = 4
    batch_size: int = 4
    score_candidates: int = 16
    score_tokens: int = 48


@dataclass(frozen=True, slots=True)
class EvidenceSpan:
    """Whole sentences ``[first_sentence, last_sentence]`` = ``text[start:end]``."""

    start: int
    end: int
    text: str
    score: float
    first_sentence: int
    last_sentence: int


@dataclass
class CficResult:
    """The spans of one extraction, best first, with what the model was shown."""

    spans: list[EvidenceSpan]
    no_evidence: bool
    p_end_at_start: float
    candidates: int  # sentences visible to the model
    prompt_tokens: int
    regions: list[tuple[int, int]]  # char ranges of the document shown to the model
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prefilled:
    """A question + document prompt run through the model once; branches start from its cache."""

    text: str
    sentences: list[Sentence]  # the sentences visible to the model, in document order
    regions: list[tuple[int, int]]  # char ranges shown
    region_of: list[int]  # region index of each visible sentence
    cache: DynamicCache
    prompt_len: int
    logits: torch.Tensor  # (vocab,) next-token logits after the prompt
    trie: SentenceTrie
    variants: list[Variant]
    prefill_ms: float
    question: str = ""
    anchor_order: list[int] = field(default_factory=list)  # visible indices, retriever's rank
    head_cached: bool = False  # the instructions + document KV came from the prefix cache

    def sentence_text(self, i: int) -> str:
        """The text of visible sentence ``i``."""
        s = self.sentences[i]
        return self.text[s.start : s.end]
