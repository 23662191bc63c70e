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
* **Likelihood scoring** (variant): every candidate sentence (or the retriever's top ones) is
  scored by its length-normalised log-likelihood given the cached prompt, batched.

Spans always index the document's text exactly (``text[start:end]``), are whole sentences and
are merged when they overlap. "No evidence" is returned when P(end) before any evidence token
is above a threshold. The library only needs a causal LM and its tokenizer (any registry model).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache

from longrag.generation.decoding import stop_token_ids
from longrag.generation.fastkv import new_cache
from longrag.generation.packed import pack_linears, unpack_linears
from longrag.generation.prompts import chat_text, encode_halves
from longrag.retrieval.types import Sentence

log = logging.getLogger(__name__)

SYSTEM = (
    "You extract evidence from a document. Copy, word for word, the sentence or consecutive "
    "sentences of the document that answer the question, and nothing else. If the document "
    "does not answer the question, reply with nothing."
)
REGION_SEPARATOR = "\n\n[...]\n\n"


# ---------------------------------------------------------------------------------------------
# plain data
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CficOptions:
    """Tunables of one extraction.

    Attributes:
        top_k: spans to return (start tokens / candidates explored).
        method: ``"prefix"`` (constrained sentence-prefix decoding) or ``"likelihood"``
            (length-normalised log-likelihood of whole candidate sentences).
        constrained: mask the start tokens to the sentence trie (False: free greedy decoding of
            a prefix, fuzzy-matched to a sentence start; ablation).
        skip: skip decoding of the span end (False: token-by-token decoding along the document
            until the model prefers a stop token; ablation).
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
        free_prefix_tokens: tokens decoded per branch when ``constrained`` is False.
    """

    top_k: int = 3
    method: str = "prefix"
    constrained: bool = True
    skip: bool = True
    max_span_sentences: int = 4
    max_span_words: int = 256
    no_evidence_threshold: float | None = 0.5
    doc_tokens: int | None = None
    regions: int = 4
    batch_size: int = 4
    score_candidates: int = 0
    score_tokens: int = 48
    free_prefix_tokens: int = 12


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
    spans: list[EvidenceSpan]
    no_evidence: bool
    p_end_at_start: float
    candidates: int  # sentences visible to the model
    prompt_tokens: int
    regions: list[tuple[int, int]]  # char ranges of the document shown to the model
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# token trie over sentence starts
# ---------------------------------------------------------------------------------------------
class _Node:
    __slots__ = ("children", "sentences", "terminal")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.sentences: set[int] = set()
        self.terminal: set[int] = set()  # sentences whose tokens end here


@dataclass(frozen=True, slots=True)
class Variant:
    """One tokenisation of a sentence as the start of the evidence."""

    sentence: int  # position in the prompt's sentence list
    prefix: str  # "" or " " (leading-space variant)
    ids: tuple[int, ...]


class SentenceTrie:
    """Token trie over the starts of sentences; each node knows which sentences pass through it."""

    def __init__(self, variants: Sequence[Variant], *, depth: int = 64) -> None:
        self.root = _Node()
        self.variants: dict[tuple[int, ...], list[Variant]] = {}
        for v in variants:
            ids = v.ids[:depth]
            if not ids:
                continue
            node = self.root
            node.sentences.add(v.sentence)
            for t in ids:
                node = node.children.setdefault(t, _Node())
                node.sentences.add(v.sentence)
            node.terminal.add(v.sentence)
            self.variants.setdefault(ids, []).append(v)

    def allowed(self, node: _Node) -> list[int]:
        return list(node.children)

    @staticmethod
    def unique(node: _Node) -> int | None:
        """The one sentence this node identifies, else None."""
        return next(iter(node.sentences)) if len(node.sentences) == 1 else None

    def walk(self, ids: Sequence[int]) -> _Node | None:
        node = self.root
        for t in ids:
            node = node.children.get(t)
            if node is None:
                return None
        return node


def sentence_variants(tokenizer: Any, texts: Sequence[str], *, max_chars: int = 400) -> list[Variant]:
    """Plain and leading-space tokenisations of each text's start (batched)."""
    heads = [t[:max_chars] for t in texts]
    out: list[Variant] = []
    if not heads:
        return out
    for prefix in ("", " "):
        enc = tokenizer([prefix + h for h in heads], add_special_tokens=False)["input_ids"]
        for i, (h, ids) in enumerate(zip(heads, enc)):
            if len(h) == max_chars and len(ids) > 1:
                ids = ids[:-1]  # the cut may have split the last token
            out.append(Variant(i, prefix, tuple(ids)))
    return out


# ---------------------------------------------------------------------------------------------
# prompt, regions, prefill
# ---------------------------------------------------------------------------------------------
def evidence_messages(document: str, question: str) -> list[dict[str, str]]:
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


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by a KV cache's key and value storage (a growing cache's headroom included)."""
    return sum(t.untyped_storage().nbytes() for layer in cache.layers
               for t in (layer.keys, layer.values) if t is not None)


class PrefixKVCache:
    """LRU of prompt-head KV caches, bounded by bytes (one per document view, per extractor).

    A service asks many questions about one document: the head of CFIC's prompt (instructions +
    document) is then prefilled once and every later question only prefills its own tail.
    ``get`` returns a private copy, so concurrent questions never share a mutable cache.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, tuple[DynamicCache, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0

    @staticmethod
    def key(ids: Sequence[int]) -> str:
        return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()

    def get(self, ids: Sequence[int]) -> DynamicCache | None:
        k = self.key(ids)
        with self._lock:
            item = self._items.get(k)
            if item is None:
                return None
            self._items.move_to_end(k)
            return copy.deepcopy(item[0])

    def put(self, ids: Sequence[int], cache: DynamicCache) -> None:
        size = cache_bytes(cache)
        if size > self.max_bytes:
            return
        k = self.key(ids)
        stored = copy.deepcopy(cache)
        with self._lock:
            if k in self._items:
                self.used -= self._items.pop(k)[1]
            self._items[k] = (stored, size)
            self.used += size
            while self.used > self.max_bytes and self._items:
                self.used -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)


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
    """Sentence indices ranked by BM25 against the question (fallback anchors)."""
    import numpy as np

    from longrag.retrieval.bm25 import BM25Index

    index = BM25Index([s.index for s in sentences], [text[s.start : s.end] for s in sentences])
    scores = index.scores(question)
    return [sentences[int(p)].index for p in np.argsort(-scores, kind="stable")]


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
        s = self.sentences[i]
        return self.text[s.start : s.end]


# ---------------------------------------------------------------------------------------------
# the extractor
# ---------------------------------------------------------------------------------------------
class CficExtractor:
    """Extracts verbatim evidence spans with a causal LM.

    Args:
        model: a causal LM (transformers, ``forward(input_ids, cache=...)``).
        tokenizer: its tokenizer.
        context_window: the model's window in tokens.
        options: default :class:`CficOptions`.
        prefix_cache_mb: memory for the KV caches of recently read documents (the prompt head:
            instructions + document), reused by later questions on the same document view; 0
            turns reuse off.
    """

    def __init__(self, model: Any, tokenizer: Any, *, context_window: int = 4096,
                 options: CficOptions | None = None, prefix_cache_mb: float = 1024) -> None:
        self.model = model
        self.prefix_cache = PrefixKVCache(int(prefix_cache_mb * 2**20))
        self.tokenizer = tokenizer
        self.context_window = context_window
        self.options = options or CficOptions()
        self.device = next(model.parameters()).device
        self.stops = sorted(stop_token_ids(tokenizer))
        if not self.stops:
            raise ValueError("the tokenizer has no EOS / end-of-turn token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stops[0]

    # -- prefill ----------------------------------------------------------------------------------
    def budget(self, question: str, options: CficOptions) -> int:
        overhead = len(self.tokenizer(prompt_text(self.tokenizer, "", question), add_special_tokens=False)["input_ids"])
        reserve = overhead + 16 + min(512, int(options.max_span_words * 1.5))
        room = max(32, self.context_window - reserve)
        return min(room, options.doc_tokens) if options.doc_tokens else room

    @torch.inference_mode()
    def prepare(self, text: str, sentences: Sequence[Sentence], question: str, *,
                anchors: Sequence[int] | None = None, options: CficOptions | None = None) -> Prefilled:
        """Choose what the model reads, build the prompt, prefill it once.

        Args:
            text: the document's text (offsets index it).
            sentences: its sentences (exact char offsets, document order).
            question: the question.
            anchors: sentence indices ranked by a retriever; used only when the document does not
                fit the budget (default: BM25 over sentences).
            options: overrides of the extractor's options.
        """
        opt = options or self.options
        sentences = sorted((s for s in sentences if s.end > s.start), key=lambda s: s.start)
        budget = self.budget(question, opt)
        texts = [text[s.start : s.end] for s in sentences]
        lengths = [len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        if sum(lengths) + len(lengths) <= budget:
            ranges = [(0, len(sentences) - 1)] if sentences else []
        else:
            if anchors is None:
                anchors = bm25_anchors(text, sentences, question)
            pos = {s.index: i for i, s in enumerate(sentences)}
            ranked = [pos[a] for a in anchors if a in pos]
            ranked += [i for i in range(len(sentences)) if i not in set(ranked)]
            ranges = select_regions([n + 1 for n in lengths], ranked, budget=budget, regions=opt.regions)
        visible: list[Sentence] = []
        region_of: list[int] = []
        regions: list[tuple[int, int]] = []
        parts: list[str] = []
        for r, (lo, hi) in enumerate(ranges):
            a, b = sentences[lo].start, sentences[hi].end
            regions.append((a, b))
            parts.append(text[a:b])
            visible.extend(sentences[lo : hi + 1])
            region_of.extend([r] * (hi - lo + 1))
        document = REGION_SEPARATOR.join(parts)
        variants = sentence_variants(self.tokenizer, [text[s.start : s.end] for s in visible])
        trie = SentenceTrie(variants)
        head, tail = split_prompt(self.tokenizer, document, question)
        t0 = time.perf_counter()
        reuse = bool(head) and self.prefix_cache.max_bytes > 0
        cache = self.prefix_cache.get(head) if reuse else None
        cached = cache is not None
        if cache is None:
            cache = new_cache()
            if head:
                self._feed(head, cache)
            if reuse:
                self.prefix_cache.put(head, cache)
        logits = self._feed(tail, cache)
        pos = {s.index: i for i, s in enumerate(visible)}
        order = [pos[a] for a in anchors if a in pos] if anchors is not None else []
        return Prefilled(text, visible, regions, region_of, cache, len(head) + len(tail), logits, trie, variants,
                         (time.perf_counter() - t0) * 1000, question, order, head_cached=cached)

    def _feed(self, ids: Sequence[int], cache: DynamicCache, chunk: int = 2048) -> torch.Tensor:
        """Prefill ``ids`` into ``cache`` in chunks; next-token logits after the last one."""
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        logits = None
        for start in range(0, x.shape[1], chunk):
            out = self.model(input_ids=x[:, start : start + chunk], cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1, :].float()
        if logits is None:
            raise ValueError("empty prompt")
        return logits

    # -- low-level model calls -------------------------------------------------------------------
    def _branch_cache(self, pre: Prefilled, batch: int) -> DynamicCache:
        _rewind(pre)
        cache = copy.deepcopy(pre.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    @torch.inference_mode()
    def _step(self, pre: Prefilled, ids: Sequence[int]) -> torch.Tensor:
        """Logits after ``prompt + ids`` (the shared cache is cropped back afterwards)."""
        _rewind(pre)
        if not ids:
            return pre.logits
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, cache=pre.cache, use_cache=True, logits_to_keep=1)
        _rewind(pre)
        return out.logits[0, -1, :].float()

    @torch.inference_mode()
    def _forward_batch(self, pre: Prefilled, seqs: Sequence[Sequence[int]],
                       positions: Sequence[Sequence[int]], batch_size: int | None = None) -> list[torch.Tensor]:
        """Feed right-padded sequences after the prompt; log-softmax at the given positions."""
        results: list[torch.Tensor] = []
        bs = max(1, batch_size or self.options.batch_size)
        for b0 in range(0, len(seqs), bs):
            chunk = seqs[b0 : b0 + bs]
            pos = positions[b0 : b0 + bs]
            width = max(len(s) for s in chunk)
            x = torch.full((len(chunk), width), self.pad_id, dtype=torch.long, device=self.device)
            for r, s in enumerate(chunk):
                x[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            if len(chunk) == 1:
                _rewind(pre)
                cache = pre.cache
            else:
                cache = self._branch_cache(pre, len(chunk))
            hidden = self.model.base_model(input_ids=x, cache=cache, use_cache=True).last_hidden_state
            _rewind(pre)
            head = self.model.get_output_embeddings()
            for r, p in enumerate(pos):
                idx = torch.tensor(list(p), dtype=torch.long, device=self.device)
                results.append(torch.log_softmax(head(hidden[r, idx]).float(), dim=-1))
            del cache, hidden
        return results

    def p_end(self, logprobs: torch.Tensor) -> torch.Tensor:
        """P(any stop token) from log-probabilities (..., vocab)."""
        return logprobs[..., self.stops].exp().sum(-1)

    # -- constrained sentence prefix decoding ------------------------------------------------------
    def _prefix_branches(self, pre: Prefilled, opt: CficOptions) -> list[tuple[int, Variant, float]]:
        """Up to top_k distinct (sentence, variant, prefix log-prob), best first."""
        root = pre.trie.root
        allowed = pre.trie.allowed(root)
        if not allowed:
            return []
        logp0 = torch.log_softmax(pre.logits, -1)
        order = sorted(allowed, key=lambda t: -float(logp0[t]))
        found: list[tuple[int, Variant, float]] = []
        seen: set[int] = set()
        for first in order[: max(opt.top_k * 3, opt.top_k)]:
            if len(found) >= opt.top_k:
                break
            node = root.children[first]
            path = [first]
            score = float(logp0[first])
            while pre.trie.unique(node) is None:
                candidates = pre.trie.allowed(node)
                if not candidates:  # identical sentences: the earliest wins
                    break
                logits = torch.log_softmax(self._step(pre, path), -1)
                best = max(candidates, key=lambda t: float(logits[t]))
                if node.terminal and float(self.p_end(logits)) > math.exp(float(logits[best])):
                    break  # a sentence that is a prefix of others ends here
                node = node.children[best]
                path.append(best)
                score += float(logits[best])
            sentence = min(node.terminal) if (node.terminal and pre.trie.unique(node) is None) else min(node.sentences)
            if sentence in seen:
                continue
            seen.add(sentence)
            variant = self._variant_for(pre, sentence, path)
            found.append((sentence, variant, score))
        return found

    def _variant_for(self, pre: Prefilled, sentence: int, path: Sequence[int]) -> Variant:
        for v in pre.variants:
            if v.sentence == sentence and tuple(v.ids[: len(path)]) == tuple(path):
                return v
        return next(v for v in pre.variants if v.sentence == sentence and v.prefix == "")

    def _free_branches(self, pre: Prefilled, opt: CficOptions) -> list[tuple[int, Variant, float]]:
        """Ablation: unconstrained greedy prefixes, fuzzy-matched to sentence starts."""
        logp0 = torch.log_softmax(pre.logits, -1)
        firsts = torch.topk(logp0, opt.top_k * 2).indices.tolist()
        found: list[tuple[int, Variant, float]] = []
        seen: set[int] = set()
        for first in firsts:
            if len(found) >= opt.top_k:
                break
            if first in self.stops:
                continue
            path = [first]
            score = float(logp0[first])
            for _ in range(opt.free_prefix_tokens - 1):
                logits = torch.log_softmax(self._step(pre, path), -1)
                t = int(logits.argmax())
                if t in self.stops:
                    break
                path.append(t)
                score += float(logits[t])
            guess = self.tokenizer.decode(path, skip_special_tokens=True).strip()
            sentence = fuzzy_sentence(guess, [pre.sentence_text(i) for i in range(len(pre.sentences))], prefix=True)
            if sentence is None or sentence in seen:
                continue
            seen.add(sentence)
            found.append((sentence, self._variant_for(pre, sentence, ()), score))
        return found

    # -- likelihood scoring variant ----------------------------------------------------------------
    def score_sentences(self, pre: Prefilled, candidates: Sequence[int] | None = None,
                        options: CficOptions | None = None) -> list[tuple[int, float]]:
        """Length-normalised log P(sentence | prompt) of each candidate (visible index), best first."""
        opt = options or self.options
        cands = list(range(len(pre.sentences))) if candidates is None else list(candidates)
        seqs, poss = [], []
        for i in cands:
            v = next(v for v in pre.variants if v.sentence == i and v.prefix == "")
            ids = list(v.ids[: opt.score_tokens])
            seqs.append(ids[:-1] if len(ids) > 1 else ids)
            poss.append(list(range(max(1, len(ids) - 1))))
        # log P(ids[0]) comes from the prompt's logits; ids[j] from position j-1 of the branch.
        logp0 = torch.log_softmax(pre.logits, -1)
        out = self._forward_batch(pre, seqs, poss, opt.batch_size) if seqs else []
        scored = []
        for i, ids_in, lp in zip(cands, seqs, out):
            v = next(v for v in pre.variants if v.sentence == i and v.prefix == "")
            ids = list(v.ids[: opt.score_tokens])
            total = float(logp0[ids[0]])
            if len(ids) > 1:
                tgt = torch.tensor(ids[1:], dtype=torch.long, device=lp.device)
                total += float(lp[: len(ids) - 1].gather(1, tgt[:, None]).sum())
            scored.append((i, total / len(ids)))
        scored.sort(key=lambda p: -p[1])
        return scored

    # -- skip decoding -----------------------------------------------------------------------------
    def _end_candidates(self, pre: Prefilled, first: int, opt: CficOptions) -> list[int]:
        ends = [first]
        words = len(pre.sentence_text(first).split())
        j = first + 1
        while (j < len(pre.sentences) and len(ends) < opt.max_span_sentences
               and pre.region_of[j] == pre.region_of[first]):
            words += len(pre.sentence_text(j).split())
            if words > opt.max_span_words:
                break
            ends.append(j)
            j += 1
        return ends

    def _span_tokens(self, pre: Prefilled, variant: Variant, ends: Sequence[int]) -> tuple[list[int], list[int]]:
        """Token ids of ``prefix + text[first.start:last.end]`` and the index of each sentence's last token."""
        first = pre.sentences[variant.sentence]
        last = pre.sentences[ends[-1]]
        body = variant.prefix + pre.text[first.start : last.end]
        enc = self.tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        positions = []
        for j in ends:
            limit = len(variant.prefix) + pre.sentences[j].end - first.start
            k = max((t for t, (_, b) in enumerate(offs) if b <= limit), default=0)
            positions.append(k)
        return list(ids), positions

    def skip_decode(self, pre: Prefilled, branches: Sequence[tuple[int, Variant, float]],
                    opt: CficOptions) -> list[tuple[int, int, float]]:
        """(first, last, P(end)) per branch: whole following sentences in one batched pass."""
        ends_list = [self._end_candidates(pre, b[0], opt) for b in branches]
        seqs, poss = [], []
        for (first, variant, _), ends in zip(branches, ends_list):
            ids, pos = self._span_tokens(pre, variant, ends)
            seqs.append(ids)
            poss.append(pos)
        outs = self._forward_batch(pre, seqs, poss, opt.batch_size) if seqs else []
        res = []
        for (first, _, _), ends, lp in zip(branches, ends_list, outs):
            pe = self.p_end(lp)
            j = int(pe.argmax())
            res.append((first, ends[j], float(pe[j])))
        return res

    @torch.inference_mode()
    def stepwise_decode(self, pre: Prefilled, branch: tuple[int, Variant, float], opt: CficOptions, *,
                        force_until: int | None = None) -> tuple[int, int, float]:
        """Token-by-token along the document from a start sentence (ablation / latency baseline).

        At each token the model chooses between the document's next token and a stop token; the
        span ends at the sentence holding the last fed token. With ``force_until`` (a visible
        sentence index) it feeds exactly the tokens up to that sentence's end (same span as skip
        decoding, one token at a time).
        """
        first, variant, _ = branch
        ends = self._end_candidates(pre, first, opt)
        if force_until is not None:
            ends = [e for e in ends if e <= force_until] or [first]
        ids, positions = self._span_tokens(pre, variant, ends)
        boundary = {p: e for p, e in zip(positions, ends)}
        cache = self._branch_cache(pre, 1)
        last, p_stop = first, 0.0
        for t, tok in enumerate(ids):
            out = self.model(input_ids=torch.tensor([[tok]], device=self.device), cache=cache, use_cache=True)
            logp = torch.log_softmax(out.logits[0, -1].float(), -1)
            if t in boundary:
                last = boundary[t]
            if force_until is not None:
                continue
            pe = float(self.p_end(logp))
            nxt = ids[t + 1] if t + 1 < len(ids) else None
            if nxt is None or pe > math.exp(float(logp[nxt])):
                # snap to the sentence holding token t
                last = next((e for p, e in zip(positions, ends) if p >= t), ends[-1])
                p_stop = pe
                break
        del cache
        return first, last, p_stop

    # -- the whole extraction ----------------------------------------------------------------------
    def extract(self, pre: Prefilled, options: CficOptions | None = None) -> CficResult:
        """Spans from a prefilled prompt (the prompt's cache is reused, never consumed)."""
        opt = options or self.options
        t0 = time.perf_counter()
        p0 = float(self.p_end(torch.log_softmax(pre.logits, -1)))
        base = dict(candidates=len(pre.sentences), prompt_tokens=pre.prompt_len, regions=pre.regions)
        thr = opt.no_evidence_threshold
        if not pre.sentences or (thr is not None and thr < 1 and p0 > thr):
            return CficResult([], True, p0, timings={"prefill_ms": round(pre.prefill_ms, 2), "extract_ms": 0.0},
                              **base)
        if opt.method == "likelihood":
            cands = None
            if opt.score_candidates and pre.anchor_order:
                cands = pre.anchor_order[: opt.score_candidates]
            scored = self.score_sentences(pre, cands, opt)[: opt.top_k]
            branches = [(i, self._variant_for(pre, i, ()), s) for i, s in scored]
        elif opt.constrained:
            branches = self._prefix_branches(pre, opt)
        else:
            branches = self._free_branches(pre, opt)
        t1 = time.perf_counter()
        if opt.skip:
            ends = self.skip_decode(pre, branches, opt)
        else:
            ends = [self.stepwise_decode(pre, b, opt) for b in branches]
        t2 = time.perf_counter()
        spans = [self._span(pre, first, last, score) for (first, last, _), (_, _, score) in zip(ends, branches)]
        merged = merge_spans(spans, pre.text)
        return CficResult(
            merged, False, p0,
            timings={"prefill_ms": round(pre.prefill_ms, 2), "start_ms": round((t1 - t0) * 1000, 2),
                     "end_ms": round((t2 - t1) * 1000, 2), "extract_ms": round((t2 - t0) * 1000, 2)},
            stats={"branches": len(branches), "ranked": [(s.start, s.end) for s in spans]},
            **base,
        )

    def _span(self, pre: Prefilled, first: int, last: int, score: float) -> EvidenceSpan:
        a, b = pre.sentences[first], pre.sentences[max(first, last)]
        return EvidenceSpan(a.start, b.end, pre.text[a.start : b.end], score, a.index, b.index)

    def __call__(self, text: str, sentences: Sequence[Sentence], question: str, *,
                 anchors: Sequence[int] | None = None, options: CficOptions | None = None) -> CficResult:
        """Prepare + extract in one call."""
        opt = options or self.options
        pre = self.prepare(text, sentences, question, anchors=anchors, options=opt)
        res = self.extract(pre, opt)
        res.stats["head_cached"] = pre.head_cached
        res.timings["total_ms"] = round(res.timings.get("extract_ms", 0.0) + pre.prefill_ms, 2)
        return res

    @torch.inference_mode()
    def generate_free(self, pre: Prefilled, max_new_tokens: int = 64) -> str:
        """Unconstrained greedy decoding of the evidence from the cached prompt (baseline)."""
        cache = self._branch_cache(pre, 1)
        logits = pre.logits
        out: list[int] = []
        for _ in range(max_new_tokens):
            t = int(logits.argmax())
            if t in self.stops:
                break
            out.append(t)
            logits = self.model(input_ids=torch.tensor([[t]], device=self.device), cache=cache,
                                use_cache=True).logits[0, -1].float()
        del cache
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _rewind(pre: Prefilled) -> None:
    """Crop the shared prompt cache back to the prompt (transformers 5 crops by a negative count)."""
    extra = pre.cache.get_seq_length() - pre.prompt_len
    if extra > 0:
        pre.cache.crop(-extra)


def merge_spans(spans: Sequence[EvidenceSpan], text: str) -> list[EvidenceSpan]:
    """Merge spans of ``text`` that overlap; merged spans keep the rank of their best member."""
    groups: list[list[EvidenceSpan]] = []
    for s in sorted(spans, key=lambda s: (s.start, s.end)):
        if groups and s.start < max(x.end for x in groups[-1]):
            groups[-1].append(s)
        else:
            groups.append([s])
    rank = {id(s): r for r, s in enumerate(spans)}
    merged = []
    for g in groups:
        start, end = min(x.start for x in g), max(x.end for x in g)
        best = min(g, key=lambda x: rank[id(x)])
        first = min(g, key=lambda x: x.start)
        last = max(g, key=lambda x: x.end)
        merged.append((rank[id(best)], EvidenceSpan(start, end, text[start:end], max(x.score for x in g),
                                                    first.first_sentence, last.last_sentence)))
    merged.sort(key=lambda p: p[0])
    return [s for _, s in merged]


def fuzzy_sentence(guess: str, sentences: Sequence[str], *, prefix: bool = False) -> int | None:
    """Index of the sentence most similar to ``guess`` (its start when ``prefix``)."""
    guess = guess.strip()
    if not guess or not sentences:
        return None
    best, best_score = None, -1.0
    for i, s in enumerate(sentences):
        ref = s[: len(guess) + 8] if prefix else s
        score = difflib.SequenceMatcher(None, guess.lower(), ref.lower(), autojunk=False).ratio()
        if score > best_score:
            best, best_score = i, score
    return best


def load_adapter_extractor(decoder: Any, adapter_dir: str, *, options: CficOptions | None = None,
                           prefix_cache_mb: float = 1024) -> CficExtractor:
    """A :class:`CficExtractor` over a copy of a registry decoder with a LoRA adapter merged in.

    The registry's shared model is left untouched (other modes keep using it).

    Args:
        decoder: a :class:`longrag.models.registry.Decoder`.
        adapter_dir: a PEFT LoRA adapter folder (``bench/train_cfic.py`` writes one).
        options: default options of the extractor.
        prefix_cache_mb: see :class:`CficExtractor`.
    """
    from peft import PeftModel

    base = copy.deepcopy(decoder.model)
    packed = unpack_linears(base)  # PEFT rewrites plain nn.Linear layers
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()
    if packed:
        pack_linears(model)
    return CficExtractor(model, decoder.tokenizer, context_window=decoder.context_window, options=options,
                         prefix_cache_mb=prefix_cache_mb)


def with_options(opt: CficOptions, **changes: Any) -> CficOptions:
    return replace(opt, **changes)
