"""CFIC evidence extraction: trie, prefix decoding, skip decoding, merging, bad input."""

from __future__ import annotations

import pytest
import torch

from longrag.retrieval.cfic import (
    CficExtractor,
    CficOptions,
    EvidenceSpan,
    PrefixKVCache,
    SentenceTrie,
    merge_spans,
    select_regions,
    sentence_variants,
)
from longrag.retrieval.segment import split_sentences
from longrag.retrieval.types import Sentence

DOC = (
    "The quick brown fox jumps over the lazy dog. She spent eleven years there.\n\n"
    "Paris is the capital of France. What is the capital of France? The answer is unknown. "
    "The quick brown fox sleeps."
)


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    return model, tok


def _check_spans(text: str, sentences: list[Sentence], spans: list[EvidenceSpan]) -> None:
    starts = {s.start for s in sentences}
    ends = {s.end for s in sentences}
    for sp in spans:
        assert sp.text == text[sp.start : sp.end]
        assert sp.start in starts and sp.end in ends  # whole sentences
        assert sp.first_sentence <= sp.last_sentence
    ordered = sorted(spans, key=lambda s: s.start)
    for a, b in zip(ordered, ordered[1:]):
        assert a.end <= b.start  # merged: no overlaps


def test_trie_allows_only_sentence_starts(tiny):
    _, tok = tiny
    sents = split_sentences(DOC)
    texts = [DOC[s.start : s.end] for s in sents]
    variants = sentence_variants(tok, texts)
    trie = SentenceTrie(variants)
    firsts = {v.ids[0] for v in variants}
    assert set(trie.allowed(trie.root)) == firsts
    plain = {tok(t, add_special_tokens=False)["input_ids"][0] for t in texts}
    spaced = {tok(" " + t, add_special_tokens=False)["input_ids"][0] for t in texts}
    assert plain | spaced == firsts  # both leading-space variants are in the trie
    for v in variants:
        node = trie.walk(v.ids)
        assert node is not None and v.sentence in node.sentences
    # a token that starts no sentence is not allowed
    other = next(t for t in range(len(tok)) if t not in firsts)
    assert trie.walk([other]) is None
    # "The quick brown fox" starts two sentences: the prefix identifies one only further on
    node = trie.walk(tok("The quick brown fox", add_special_tokens=False)["input_ids"])
    assert node is not None and len(node.sentences) == 2


@pytest.mark.parametrize("opts", [
    CficOptions(no_evidence_threshold=None),
    CficOptions(no_evidence_threshold=None, top_k=5, max_span_sentences=3),
    CficOptions(no_evidence_threshold=None, method="likelihood"),
])
def test_every_span_is_exact_document_text(tiny, opts):
    model, tok = tiny
    ex = CficExtractor(model, tok, context_window=4096)
    sents = split_sentences(DOC)
    res = ex(DOC, sents, "What is the capital of France?", options=opts)
    assert not res.no_evidence
    assert 1 <= len(res.spans) <= opts.top_k
    _check_spans(DOC, sents, res.spans)
    assert res.candidates == len(sents)
    assert res.timings["extract_ms"] >= 0


def test_skip_decoding_ends_on_sentence_boundaries_within_bounds(tiny):
    model, tok = tiny
    ex = CficExtractor(model, tok)
    sents = split_sentences(DOC)
    opt = CficOptions(no_evidence_threshold=None, max_span_sentences=2)
    pre = ex.prepare(DOC, sents, "Where did she spend eleven years?", options=opt)
    branches = ex.prefix_branches(pre, opt)
    assert branches and len({b[0] for b in branches}) == len(branches)  # distinct sentences
    for first, last, p in ex.skip_decode(pre, branches, opt):
        assert first <= last <= first + 1
        assert 0.0 <= p <= 1.0
        # never crosses a paragraph boundary... but regions are the whole doc here, so only
        # the sentence bound applies; the end is a sentence end by construction
        assert pre.sentences[last].end in {s.end for s in sents}
    # the cache is reusable: a second extraction from the same prefill gives the same spans
    a = ex.extract(pre, opt)
    b = ex.extract(pre, opt)
    assert [(s.start, s.end) for s in a.spans] == [(s.start, s.end) for s in b.spans]
    assert pre.cache.get_seq_length() == pre.prompt_len


def test_skip_decoding_matches_token_by_token_p_end(tiny):
    """The batched skip pass reads the same P(end) as feeding the span one token at a time."""
    model, tok = tiny
    ex = CficExtractor(model, tok)
    sents = split_sentences(DOC)
    opt = CficOptions(no_evidence_threshold=None, max_span_sentences=3, top_k=2)
    pre = ex.prepare(DOC, sents, "What is the capital?", options=opt)
    branches = ex.prefix_branches(pre, opt)
    ends = [ex.end_candidates(pre, b[0], opt) for b in branches]
    seqs, poss = zip(*[ex.span_tokens(pre, b[1], e) for b, e in zip(branches, ends)])
    batched = ex.forward_batch(pre, list(seqs), list(poss), batch_size=2)
    for ids, pos, lp in zip(seqs, poss, batched):
        for k, p in enumerate(pos):
            step = torch.log_softmax(ex.step(pre, ids[: p + 1]), -1)
            assert torch.allclose(ex.p_end(step), ex.p_end(lp[k]), atol=1e-4)


def test_merge_spans_joins_overlaps_keeps_rank():
    text = "Alpha is one. Beta is two. Gamma is three. Delta is four."
    s = split_sentences(text)
    sp = lambda a, b, score: EvidenceSpan(s[a].start, s[b].end, text[s[a].start : s[b].end], score, a, b)  # noqa: E731
    merged = merge_spans([sp(2, 3, -1.0), sp(0, 1, -2.0), sp(1, 2, -3.0)], text)
    assert len(merged) == 1
    assert (merged[0].start, merged[0].end) == (0, len(text)) and merged[0].text == text
    apart = merge_spans([sp(3, 3, -1.0), sp(0, 0, -2.0)], text)
    assert [m.first_sentence for m in apart] == [3, 0]  # rank order kept, no merge


def test_second_question_reuses_the_document_kv(tiny):
    """The instructions + document are prefilled once; a later question gives the same result."""
    model, tok = tiny
    sents = split_sentences(DOC)
    cold = CficExtractor(model, tok, prefix_cache_mb=0)
    warm = CficExtractor(model, tok)
    opt = CficOptions(no_evidence_threshold=None)
    first = warm(DOC, sents, "Who spent eleven years there?", options=opt)
    assert first.stats["head_cached"] is False and len(warm.prefix_cache) == 1
    for q in ("What is the capital of France?", "Who spent eleven years there?"):
        again = warm(DOC, sents, q, options=opt)
        fresh = cold(DOC, sents, q, options=opt)
        assert again.stats["head_cached"] is True and fresh.stats["head_cached"] is False
        assert [(s.start, s.end) for s in again.spans] == [(s.start, s.end) for s in fresh.spans]
        assert again.prompt_tokens == fresh.prompt_tokens
        assert again.p_end_at_start == pytest.approx(fresh.p_end_at_start, rel=1e-4, abs=1e-7)
        _check_spans(DOC, sents, again.spans)
    other = warm(DOC.replace("Paris", "Lyon"), split_sentences(DOC.replace("Paris", "Lyon")), "Capital?", options=opt)
    assert other.stats["head_cached"] is False and len(warm.prefix_cache) == 2


def test_prefix_cache_is_bounded_and_returns_private_copies():
    from transformers import DynamicCache

    def kv(n: int) -> DynamicCache:
        c = DynamicCache()
        c.update(torch.ones(1, 2, n, 8), torch.ones(1, 2, n, 8), 0)
        return c

    one = 2 * 2 * 10 * 8 * 4  # keys + values of kv(10), bytes
    lru = PrefixKVCache(max_bytes=2 * one)
    lru.put([1], kv(10))
    lru.put([2], kv(10))
    got = lru.get([1])  # [1] becomes the most recent
    got.crop(-5)
    assert lru.get([1]).get_seq_length() == 10  # the stored copy is untouched
    lru.put([3], kv(10))  # evicts [2], the least recently used
    assert lru.get([2]) is None and lru.get([3]) is not None and lru.used <= 2 * one
    lru.put([4], kv(100))  # larger than the whole budget: not stored
    assert lru.get([4]) is None and len(lru) == 2


def test_no_evidence_threshold(tiny):
    model, tok = tiny
    ex = CficExtractor(model, tok)
    sents = split_sentences(DOC)
    always = ex(DOC, sents, "Who?", options=CficOptions(no_evidence_threshold=0.0))
    assert always.no_evidence and always.spans == [] and always.p_end_at_start > 0
    never = ex(DOC, sents, "Who?", options=CficOptions(no_evidence_threshold=None))
    assert not never.no_evidence and never.spans
    above = ex(DOC, sents, "Who?", options=CficOptions(no_evidence_threshold=never.p_end_at_start * 2))
    assert not above.no_evidence


def test_long_document_uses_regions_around_anchors(tiny):
    model, tok = tiny
    ex = CficExtractor(model, tok)
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    sents = split_sentences(text)
    opt = CficOptions(no_evidence_threshold=None, doc_tokens=120, regions=2)
    res = ex(text, sents, "Which sentence is number 150?", anchors=[150, 20], options=opt)
    assert 1 <= len(res.regions) <= 2
    assert any(a <= sents[150].start < b for a, b in res.regions)
    for sp in res.spans:
        assert any(a <= sp.start and sp.end <= b for a, b in res.regions)
    _check_spans(text, sents, res.spans)
    assert res.candidates < len(sents)


def test_select_regions_budget_and_order():
    regions = select_regions([10] * 50, [40, 5, 41], budget=60, regions=2)
    assert regions == sorted(regions)
    assert sum((hi - lo + 1) * 10 for lo, hi in regions) <= 60
    assert any(lo <= 40 <= hi for lo, hi in regions) and any(lo <= 5 <= hi for lo, hi in regions)


@pytest.mark.parametrize("text", [
    "no punctuation at all just words flowing on and on " * 30,  # no sentence punctuation
    "word " * 600,  # one very long "sentence" (split at whitespace by the segmenter)
    "The same sentence. " * 20 + "Another one.",  # repeated sentences
    "Short.",
])
def test_bad_input_does_not_crash(tiny, text):
    model, tok = tiny
    ex = CficExtractor(model, tok)
    sents = split_sentences(text)
    for opts in (CficOptions(no_evidence_threshold=None, doc_tokens=200),
                 CficOptions(no_evidence_threshold=None, doc_tokens=200, method="likelihood")):
        res = ex(text, sents, "What?", options=opts)
        _check_spans(text, sents, res.spans)
        assert res.spans


def test_raw_long_sentence_and_empty_inputs(tiny):
    model, tok = tiny
    ex = CficExtractor(model, tok)
    text = "x" * 1500
    res = ex(text, [Sentence(0, 0, len(text))], "What?", options=CficOptions(no_evidence_threshold=None))
    assert [(s.start, s.end) for s in res.spans] == [(0, len(text))]
    empty = ex("", [], "What?")
    assert empty.no_evidence and empty.spans == []


@pytest.mark.integration
def test_smollm2_extracts_real_evidence():
    from longrag.models.registry import load_decoder

    dec = load_decoder("smollm2-135m-instruct")
    text = (
        "Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics.\n\n"
        "Albert Einstein was born in Ulm in 1879. He worked at the patent office in Bern for seven years. "
        "His theory of general relativity was published in 1915."
    )
    sents = split_sentences(text)
    ex = CficExtractor(dec.model, dec.tokenizer, context_window=dec.context_window)
    res = ex(text, sents, "Where did Einstein work for seven years?", options=CficOptions(no_evidence_threshold=None))
    _check_spans(text, sents, res.spans)
    assert any("patent office" in s.text for s in res.spans)


def test_qa_mode_cfic_returns_exact_evidence(tiny_decoder_dir):
    """``mode="cfic"`` through the QA pipeline: evidence spans index the stored text exactly."""
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus
    from longrag.services.qa import QAPipeline, Question

    corpus = Corpus(settings=get_settings())
    doc_id = corpus.ingest_bytes(DOC.encode(), "doc.txt").doc_id
    pipe = QAPipeline(corpus, decoder_name=str(tiny_decoder_dir))
    ans = pipe.ask(Question("What is the capital of France?", mode="cfic", max_new_tokens=4,
                            options={"no_evidence_threshold": 1.0}))
    assert ans.mode == "cfic" and ans.evidence
    text = corpus.text(doc_id)
    for ev in ans.evidence:
        assert ev.doc_id == doc_id and text[ev.start : ev.end] == ev.text
    assert ans.stats["cfic_spans"] == len(ans.evidence) and ans.stats["extraction_ms"] >= 0
    assert ans.stats["cfic_candidates"] == len(corpus.store.sentences(doc_id))
    none = pipe.ask(Question("What is the capital of France?", mode="cfic", options={"no_evidence_threshold": 0.0}))
    assert none.answer == "" and not none.answerable and none.evidence == [] and none.stats["cfic_no_evidence"]
    # a question cannot point the server at a folder: adapters are env only, extractors registry names
    from longrag.errors import InvalidRequestError

    for bad in ({"adapter": "/tmp"}, {"extractor": "/tmp"}, {"extractor": "all-minilm-l6-v2"},
                {"prefix_cache_mb": 0}):
        with pytest.raises(InvalidRequestError):
            pipe.ask(Question("What is the capital of France?", mode="cfic", options=bad))
