"""Chunking-free in-context evidence extraction (CFIC, arXiv 2402.09760).

The decoder reads the document (or, when it is longer than the window, the top regions chosen
by retrieval) together with the question once; the KV cache of that prompt is kept and every
later step branches from it:

* **Constrained Sentence Prefix Decoding**: a token trie over the starts of the prompt's
  sentences (both the plain and the leading-space tokenisation) masks the logits; the top-k
  allowed start tokens are each extended greedily inside the trie until the prefix identifies
  one sentence.
* **Skip Decoding**: from that sentence, the following whole sentences are fed in one forward
  pass (the k branches batched) through a copy of the cached state, and P(end of evidence)
  (the stop tokens) is read after each sentence; the span ends at the argmax, bounded by a
  number of sentences and words.
* **Likelihood scoring** (``method="likelihood"``): every candidate sentence (or the
  retriever's top ones) is scored by its length-normalised log-likelihood given the cached
  prompt, batched.

Spans always index the document's text exactly (``text[start:end]``), are whole sentences and
are merged when they overlap. "No evidence" is returned when P(end) before any evidence token
is above a threshold. The library only needs a causal LM and its tokenizer (any registry model).

Modules: :mod:`.types` (options, prefilled prompt, result), :mod:`.trie` (the sentence-start
index), :mod:`.prompt` (prompt and regions), :mod:`.prefix_cache` (document KV reuse),
:mod:`.extractor` (prefill and decoding), :mod:`.adapter` (a LoRA-merged extractor).
"""

from longrag.retrieval.cfic.adapter import load_adapter_extractor
from longrag.retrieval.cfic.extractor import CficExtractor, merge_spans, rewind
from longrag.retrieval.cfic.prefix_cache import PrefixKVCache, cache_bytes
from longrag.retrieval.cfic.prompt import (
    REGION_SEPARATOR,
    SYSTEM,
    bm25_anchors,
    evidence_messages,
    prompt_text,
    select_regions,
    split_prompt,
)
from longrag.retrieval.cfic.trie import SentenceTrie, TrieNode, Variant, sentence_variants
from longrag.retrieval.cfic.types import Branch, CficOptions, CficResult, EvidenceSpan, Prefilled, SpanEnd

__all__ = [
    "REGION_SEPARATOR", "SYSTEM", "Branch", "CficExtractor", "CficOptions", "CficResult", "EvidenceSpan",
    "Prefilled", "PrefixKVCache", "SentenceTrie", "SpanEnd", "TrieNode", "Variant", "bm25_anchors",
    "cache_bytes", "evidence_messages", "load_adapter_extractor", "merge_spans", "prompt_text", "rewind",
    "select_regions", "sentence_variants", "split_prompt",
]
