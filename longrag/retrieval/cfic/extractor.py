"""The extractor: one prefill of question + document, then constrained decoding of the spans.

:meth:`CficExtractor.prepare` chooses what the model reads (the whole document, or regions around
the retriever's anchors when it is longer than the budget), builds the sentence trie and
prefills the prompt once, reusing the document's KV from the prefix cache when it has it.
:meth:`CficExtractor.extract` then branches from that cache:

* the start sentence of each span comes from constrained sentence-prefix decoding
  (:meth:`~CficExtractor.prefix_branches`) or from likelihood scoring of whole sentences
  (:meth:`~CficExtractor.score_sentences`);
* its end from skip decoding (:meth:`~CficExtractor.skip_decode`): the following sentences are
  fed in one batched pass and the span ends where P(end of evidence) is highest.

Every span is whole sentences of the document (``text[start:end]``); overlapping spans merge.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from longrag.generation.decoding import stop_token_ids
from longrag.generation.fastkv import new_cache
from longrag.retrieval.cfic.prefix_cache import PrefixKVCache
from longrag.retrieval.cfic.prompt import REGION_SEPARATOR, bm25_anchors, prompt_text, select_regions, split_prompt
from longrag.retrieval.cfic.trie import SentenceTrie, Variant, sentence_variants
from longrag.retrieval.cfic.types import Branch, CficOptions, CficResult, EvidenceSpan, Prefilled, SpanEnd
from longrag.retrieval.types import Sentence


def rewind(pre: Prefilled) -> None:
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
    merged: list[tuple[int, EvidenceSpan]] = []
    for g in groups:
        start, end = min(x.start for x in g), max(x.end for x in g)
        best = min(g, key=lambda x: rank[id(x)])
        first = min(g, key=lambda x: x.start)
        last = max(g, key=lambda x: x.end)
        merged.append((rank[id(best)], EvidenceSpan(start, end, text[start:end], max(x.score for x in g),
                                                    first.first_sentence, last.last_sentence)))
    merged.sort(key=lambda p: p[0])
    return [s for _, s in merged]


class CficExtractor:
    """Extracts verbatim evidence spans with a causal LM.

    Args:
        model: a causal LM (transformers, ``forward(input_ids, cache=...)``, a ``base_model`` and
            output embeddings).
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
        """Document tokens the model can read for this question (window minus prompt and span)."""
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

    # -- model calls from the prefilled prompt ----------------------------------------------------
    def branch_cache(self, pre: Prefilled, batch: int) -> DynamicCache:
        """A private copy of the prompt's cache, repeated for ``batch`` rows."""
        rewind(pre)
        cache = copy.deepcopy(pre.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    @torch.inference_mode()
    def step(self, pre: Prefilled, ids: Sequence[int]) -> torch.Tensor:
        """Logits after ``prompt + ids`` (the shared cache is cropped back afterwards)."""
        rewind(pre)
        if not ids:
            return pre.logits
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, cache=pre.cache, use_cache=True, logits_to_keep=1)
        rewind(pre)
        return out.logits[0, -1, :].float()

    @torch.inference_mode()
    def forward_batch(self, pre: Prefilled, seqs: Sequence[Sequence[int]],
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
                rewind(pre)
                cache = pre.cache
            else:
                cache = self.branch_cache(pre, len(chunk))
            hidden = self.model.base_model(input_ids=x, cache=cache, use_cache=True).last_hidden_state
            rewind(pre)
            head = self.model.get_output_embeddings()
            for r, p in enumerate(pos):
                idx = torch.tensor(list(p), dtype=torch.long, device=self.device)
                results.append(torch.log_softmax(head(hidden[r, idx]).float(), dim=-1))
            del cache, hidden
        return results

    def p_end(self, logprobs: torch.Tensor) -> torch.Tensor:
        """P(any stop token) from log-probabilities (..., vocab)."""
        return logprobs[..., self.stops].exp().sum(-1)

    # -- the start of each span: constrained sentence-prefix decoding ----------------------------
    def prefix_branches(self, pre: Prefilled, opt: CficOptions) -> list[Branch]:
        """Up to top_k distinct (sentence, variant, prefix log-prob), best first."""
        root = pre.trie.root
        allowed = pre.trie.allowed(root)
        if not allowed:
            return []
        logp0 = torch.log_softmax(pre.logits, -1)
        order = sorted(allowed, key=lambda t: -float(logp0[t]))
        found: list[Branch] = []
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
                logits = torch.log_softmax(self.step(pre, path), -1)
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
            found.append((sentence, self.variant_for(pre, sentence, path), score))
        return found

    def variant_for(self, pre: Prefilled, sentence: int, path: Sequence[int]) -> Variant:
        """The tokenisation of ``sentence`` that starts with ``path`` (the plain one otherwise)."""
        for v in pre.variants:
            if v.sentence == sentence and tuple(v.ids[: len(path)]) == tuple(path):
                return v
        return next(v for v in pre.variants if v.sentence == sentence and v.prefix == "")

    # -- the start of each span: likelihood scoring (method="likelihood") ------------------------
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
        out = self.forward_batch(pre, seqs, poss, opt.batch_size) if seqs else []
        scored = []
        for i, lp in zip(cands, out):
            v = next(v for v in pre.variants if v.sentence == i and v.prefix == "")
            ids = list(v.ids[: opt.score_tokens])
            total = float(logp0[ids[0]])
            if len(ids) > 1:
                tgt = torch.tensor(ids[1:], dtype=torch.long, device=lp.device)
                total += float(lp[: len(ids) - 1].gather(1, tgt[:, None]).sum())
            scored.append((i, total / len(ids)))
        scored.sort(key=lambda p: -p[1])
        return scored

    # -- the end of each span: skip decoding ------------------------------------------------------
    def end_candidates(self, pre: Prefilled, first: int, opt: CficOptions) -> list[int]:
        """Visible sentences a span from ``first`` may end on (bounded, inside its region)."""
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

    def span_tokens(self, pre: Prefilled, variant: Variant, ends: Sequence[int]) -> tuple[list[int], list[int]]:
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

    def skip_decode(self, pre: Prefilled, branches: Sequence[Branch], opt: CficOptions) -> list[SpanEnd]:
        """(first, last, P(end)) per branch: whole following sentences in one batched pass."""
        ends_list = [self.end_candidates(pre, b[0], opt) for b in branches]
        seqs, poss = [], []
        for (_, variant, _), ends in zip(branches, ends_list):
            ids, pos = self.span_tokens(pre, variant, ends)
            seqs.append(ids)
            poss.append(pos)
        outs = self.forward_batch(pre, seqs, poss, opt.batch_size) if seqs else []
        res = []
        for (first, _, _), ends, lp in zip(branches, ends_list, outs):
            pe = self.p_end(lp)
            j = int(pe.argmax())
            res.append((first, ends[j], float(pe[j])))
        return res

    # -- the whole extraction ---------------------------------------------------------------------
    def start_branches(self, pre: Prefilled, opt: CficOptions) -> list[Branch]:
        """The start sentence of each span, best first, by ``opt.method``."""
        if opt.method != "likelihood":
            return self.prefix_branches(pre, opt)
        cands = pre.anchor_order[: opt.score_candidates] if opt.score_candidates and pre.anchor_order else None
        scored = self.score_sentences(pre, cands, opt)[: opt.top_k]
        return [(i, self.variant_for(pre, i, ()), s) for i, s in scored]

    def span(self, pre: Prefilled, first: int, last: int, score: float) -> EvidenceSpan:
        """The evidence span over visible sentences ``first..last``."""
        a, b = pre.sentences[first], pre.sentences[max(first, last)]
        return EvidenceSpan(a.start, b.end, pre.text[a.start : b.end], score, a.index, b.index)

    def extract(self, pre: Prefilled, options: CficOptions | None = None) -> CficResult:
        """Spans from a prefilled prompt (the prompt's cache is reused, never consumed)."""
        opt = options or self.options
        t0 = time.perf_counter()
        p0 = float(self.p_end(torch.log_softmax(pre.logits, -1)))
        base: dict[str, Any] = dict(candidates=len(pre.sentences), prompt_tokens=pre.prompt_len, regions=pre.regions)
        thr = opt.no_evidence_threshold
        if not pre.sentences or (thr is not None and thr < 1 and p0 > thr):
            return CficResult([], True, p0, timings={"prefill_ms": round(pre.prefill_ms, 2), "extract_ms": 0.0},
                              **base)
        branches = self.start_branches(pre, opt)
        t1 = time.perf_counter()
        ends = self.skip_decode(pre, branches, opt)
        t2 = time.perf_counter()
        spans = [self.span(pre, first, last, score) for (first, last, _), (_, _, score) in zip(ends, branches)]
        return CficResult(
            merge_spans(spans, pre.text), False, p0,
            timings={"prefill_ms": round(pre.prefill_ms, 2), "start_ms": round((t1 - t0) * 1000, 2),
                     "end_ms": round((t2 - t1) * 1000, 2), "extract_ms": round((t2 - t0) * 1000, 2)},
            stats={"branches": len(branches), "ranked": [(s.start, s.end) for s in spans]},
            **base,
        )

    def __call__(self, text: str, sentences: Sequence[Sentence], question: str, *,
                 anchors: Sequence[int] | None = None, options: CficOptions | None = None) -> CficResult:
        """Prepare + extract in one call."""
        opt = options or self.options
        pre = self.prepare(text, sentences, question, anchors=anchors, options=opt)
        res = self.extract(pre, opt)
        res.stats["head_cached"] = pre.head_cached
        res.timings["total_ms"] = round(res.timings.get("extract_ms", 0.0) + pre.prefill_ms, 2)
        return res
