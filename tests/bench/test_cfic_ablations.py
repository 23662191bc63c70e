"""The benchmark's CFIC ablations: free prefixes, token-by-token ends, free generation."""

from __future__ import annotations

import pytest
import torch

from bench.cfic_ablations import extract_ablation, free_branches, fuzzy_sentence, generate_free, stepwise_decode

from longrag.retrieval.cfic import CficExtractor, CficOptions
from longrag.retrieval.segment import split_sentences

DOC = (
    "The quick brown fox jumps over the lazy dog. She spent eleven years there.\n\n"
    "Paris is the capital of France. What is the capital of France? The answer is unknown. "
    "The quick brown fox sleeps."
)


@pytest.fixture(scope="module")
def extractor(tiny_decoder_dir) -> CficExtractor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    return CficExtractor(model, tok, context_window=4096)


@pytest.mark.parametrize("constrained,skip", [(False, True), (True, False), (False, False)])
def test_ablation_spans_are_exact_whole_sentences(extractor, constrained, skip):
    sents = split_sentences(DOC)
    opt = CficOptions(no_evidence_threshold=None)
    pre = extractor.prepare(DOC, sents, "What is the capital of France?", options=opt)
    spans = extract_ablation(extractor, pre, opt, constrained=constrained, skip=skip)
    assert 1 <= len(spans) <= opt.top_k
    starts, ends = {s.start for s in sents}, {s.end for s in sents}
    for sp in spans:
        assert sp.text == DOC[sp.start : sp.end] and sp.start in starts and sp.end in ends
    assert pre.cache.get_seq_length() == pre.prompt_len  # the prompt's cache is not consumed


def test_stepwise_decode_forced_to_the_skip_spans_ends_on_them(extractor):
    sents = split_sentences(DOC)
    opt = CficOptions(no_evidence_threshold=None, max_span_sentences=3)
    pre = extractor.prepare(DOC, sents, "Where did she spend eleven years?", options=opt)
    branches = extractor.prefix_branches(pre, opt)
    for b, (first, last, _) in zip(branches, extractor.skip_decode(pre, branches, opt)):
        assert stepwise_decode(extractor, pre, b, opt, force_until=last)[:2] == (first, last)
    assert free_branches(extractor, pre, opt, prefix_tokens=3)
    assert isinstance(generate_free(extractor, pre, 4), str)


def test_fuzzy_sentence_matches_whole_sentences_and_prefixes():
    sentences = ["Paris is the capital of France.", "The fox sleeps."]
    assert fuzzy_sentence("the fox sleeps", sentences) == 1
    assert fuzzy_sentence("Paris is", sentences, prefix=True) == 0
    assert fuzzy_sentence("   ", sentences) is None and fuzzy_sentence("x", []) is None
