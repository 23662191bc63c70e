"""RAPID: retrieval-augmented speculative decoding (tiny random decoders; one SmolLM2 test)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from pydantic import ValidationError
from scipy.stats import chisquare
from transformers import AutoTokenizer

from longrag.config import Settings, get_settings
from longrag.errors import InvalidRequestError
from longrag.generation.decoding import generate
from longrag.generation.prompts import answer_messages, encode_chat
from longrag.generation.rapid import (
    DraftLength,
    HybridDrafter,
    KVState,
    LearntLengths,
    LMDrafter,
    NgramDrafter,
    RapidConfig,
    Verdict,
    adjusted_logits,
    check_same_tokenizer,
    context_budget,
    rapid_generate,
    retrieve_context,
    select_chunks,
    token_chunks,
    verify,
)
from longrag.models.tiny import build_tiny_decoder
from longrag.services.corpus import Corpus
from longrag.services.qa import MODE_OPTIONS, MODES, QAPipeline, Question

from rapid_fixtures import CONTEXT, one_thread, other, other_dir, tiny  # noqa: F401 - fixtures
from rapid_fixtures import prompt as _prompt


# -- drafter context -----------------------------------------------------------------------------


def test_token_chunks_cover_text_without_overlap(tiny):
    tok, _ = tiny
    offsets = tok(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    chunks = token_chunks(offsets, chunk_tokens=16)
    assert chunks[0].tok_start == 0 and chunks[-1].tok_end == len(offsets)
    assert all(a.tok_end == b.tok_start for a, b in zip(chunks, chunks[1:]))
    assert all(c.tokens == 16 for c in chunks[:-1]) and 0 < chunks[-1].tokens <= 16


def test_budget_is_max_of_floor_and_s_over_24():
    assert context_budget(10_000, budget_tokens=4096) == 4096
    assert context_budget(240_000, budget_tokens=4096) == 10_000
    assert context_budget(100, budget_tokens=0, budget_ratio=24) == 5


def test_selection_respects_threshold_budget_and_document_order(tiny):
    tok, _ = tiny
    offsets = tok(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    chunks = token_chunks(offsets, chunk_tokens=10)
    scores = [0.0] * len(chunks)
    scores[5], scores[1], scores[3] = 0.9, 0.8, 0.7
    assert select_chunks(chunks, scores, budget=20, threshold=0.3) == [1, 5]  # best two, doc order
    assert select_chunks(chunks, scores, budget=1000, threshold=0.75) == [1, 5]
    res = retrieve_context(CONTEXT, tok, scores, chunk_tokens=10, budget_tokens=30, threshold=0.3)
    assert [c.index for c in res.chunks] == [1, 3, 5] and res.tokens <= res.budget_tokens
    first = CONTEXT[res.chunks[0].start : res.chunks[0].end].strip()
    assert res.text.startswith(first)
    with pytest.raises(ValueError):
        select_chunks(chunks, scores[:-1], budget=10)


def test_selection_orders_by_scores_and_thresholds_relevance(tiny):
    tok, _ = tiny
    offsets = tok(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    chunks = token_chunks(offsets, chunk_tokens=10)
    ranks = [1 / (60 + r) for r in range(len(chunks))]  # fused scores: chunk 0 best, all under 0.3
    cosines = [0.1] * len(chunks)
    cosines[0], cosines[2], cosines[4] = 0.2, 0.5, 0.4
    assert select_chunks(chunks, ranks, budget=20, threshold=0.3) == []  # the old behaviour on fused scores
    assert select_chunks(chunks, ranks, budget=20, threshold=0.3, relevance=cosines) == [2, 4]
    assert select_chunks(chunks, ranks, budget=10, threshold=0.3, relevance=cosines) == [2]  # better-ranked first
    res = retrieve_context(CONTEXT, tok, ranks, chunk_tokens=10, budget_tokens=30, threshold=0.3,
                           relevance=lambda cs: cosines[: len(cs)])
    assert [c.index for c in res.chunks] == [2, 4] and res.scores == [ranks[2], ranks[4]]
    assert res.relevance == [0.5, 0.4] and res.top_relevance == 0.5  # on the threshold's scale, not the ranks'
    plain = retrieve_context(CONTEXT, tok, cosines, chunk_tokens=10, budget_tokens=30, threshold=0.3)
    assert plain.relevance is None and plain.top_relevance == 0.5
    with pytest.raises(ValueError):
        select_chunks(chunks, ranks, budget=10, relevance=cosines[:-1])


def test_empty_retrieval_falls_back_to_target_only(tiny):
    tok, model = tiny
    res = retrieve_context(CONTEXT, tok, lambda chunks: [0.1] * len(chunks), chunk_tokens=32, threshold=0.3)
    assert res.empty and res.text == "" and res.top_relevance is None
    ids = _prompt(tok)
    out = rapid_generate(KVState(model), None, tok, ids, config=RapidConfig(max_new_tokens=8))
    ref = generate(model, tok, ids, max_new_tokens=8)
    assert out.token_ids == ref.token_ids and out.fallback and out.drafted == 0


# -- the adjusted distribution and acceptance ----------------------------------------------------


def test_eta_zero_is_plain_target_and_tail_guard_holds():
    torch.manual_seed(0)
    z = torch.randn(50) * 3
    q = torch.softmax(torch.randn(50), -1)
    p, adj = adjusted_logits(z, q, eta=0.0, temperature=0.7)
    assert torch.equal(adj, z / 0.7)
    p, adj = adjusted_logits(z, q, eta=10.0, temperature=0.7, tail=0.1)
    tail = p < 0.1 * p.max()
    assert tail.any() and torch.equal(adj[tail], (z / 0.7)[tail])
    assert not torch.equal(adj[~tail], (z / 0.7)[~tail])


def test_one_hot_drafts_are_verified_losslessly_at_any_eta():
    # an n-gram lookup (q None) has no distribution to transfer: a large eta must not make the
    # target accept a copied token it ranks low; an LLM draft with the same one-hot q is pulled
    z = torch.tensor([[3.0, 0.0, -1.0, -4.0], [0.0, 2.0, 1.0, -1.0]])
    assert verify([3], None, z, eta=1000.0, temperature=0.0, tail=0.0) == Verdict(0, 0)
    assert verify([3], None, z, eta=0.0, temperature=0.0) == Verdict(0, 0)
    one_hot = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert verify([3], one_hot, z, eta=1000.0, temperature=0.0, tail=0.0) == Verdict(1, 1)
    gen = torch.Generator().manual_seed(0)  # sampling: a one-hot lookup accepted with p(x) only
    accepted = sum(verify([3], None, z, eta=1000.0, temperature=1.0, tail=0.0, generator=gen).accepted
                   for _ in range(400))
    assert accepted / 400 < 0.05  # p(x = 3) ~ 0.0008 under the target


def test_consensus_keeps_a_token_both_models_rank_first():
    # both rank token 0 first; the target is surer (0.9) than the drafter (0.6), which gives
    # token 1 0.3 where the target gives it 0.01: eta * (q - p) then lifts token 1 over token 0
    z = torch.log(torch.tensor([[0.9, 0.01, 0.09], [0.2, 0.5, 0.3]]))
    q = torch.tensor([[0.6, 0.3, 0.1]])
    assert verify([0], q, z, eta=20.0, temperature=0.0, tail=0.0) == Verdict(0, 1)
    assert verify([0], q, z, eta=20.0, temperature=0.0, tail=0.0, consensus=True) == Verdict(1, 1)
    # where the models disagree, the shift still decides: token 1 drafted, the target prefers 0
    q1 = torch.tensor([[0.2, 0.7, 0.1]])
    assert verify([1], q1, z, eta=20.0, temperature=0.0, tail=0.0, consensus=True) == Verdict(1, 1)
    assert verify([1], q1, z, eta=0.0, temperature=0.0, consensus=True) == Verdict(0, 0)
    # sampling: p(x) >= q(x), so plain speculative sampling always accepts token 0; so does consensus
    def accepted(consensus: bool) -> int:
        gen = torch.Generator().manual_seed(0)
        return sum(verify([0], q, z, eta=20.0, temperature=1.0, tail=0.0, consensus=consensus,
                          generator=gen).accepted for _ in range(200))
    assert accepted(True) == 200
    assert accepted(False) < 20


def test_residual_replacement_emits_a_target_favoured_token():
    # the consensus case: both rank token 0 first, eta * (q - p) lifts token 1 to the top of p_hat
    z = torch.log(torch.tensor([[0.9, 0.01, 0.09], [0.2, 0.5, 0.3]]))
    q = torch.tensor([[0.6, 0.3, 0.1]])
    assert verify([0], q, z, eta=20.0, temperature=0.0, tail=0.0) == Verdict(0, 1)  # argmax p_hat
    assert verify([0], q, z, eta=20.0, temperature=0.0, tail=0.0, residual=True) == Verdict(0, 0)
    # a token the shift lifts to the top is still accepted; a bonus token is unchanged
    q1 = torch.tensor([[0.2, 0.7, 0.1]])
    assert verify([1], q1, z, eta=20.0, temperature=0.0, tail=0.0, residual=True) == Verdict(1, 1)
    # a third token neither model ranks first: target 0, drafter 1, p_hat's argmax 2
    z3 = torch.log(torch.tensor([[0.6, 1e-6, 0.4], [0.2, 0.5, 0.3]]))
    q3 = torch.tensor([[0.05, 0.5, 0.45]])
    assert verify([1], q3, z3, eta=20.0, temperature=0.0, tail=0.0) == Verdict(0, 2)
    assert verify([1], q3, z3, eta=20.0, temperature=0.0, tail=0.0, residual=True) == Verdict(0, 0)
    # eta 0 stays lossless: the target's argmax, not the argmax of p - q
    z0 = torch.log(torch.tensor([[0.5, 0.1, 0.4], [0.2, 0.5, 0.3]]))
    q0 = torch.tensor([[0.6, 0.4, 0.0]])
    assert verify([1], q0, z0, eta=0.0, temperature=0.0, residual=True) == Verdict(0, 0)
    assert verify([1], q0, z0, eta=0.0, temperature=0.0) == Verdict(0, 0)


def _simulate_two_tokens(zs, qs, *, eta: float, gamma: int, gen: torch.Generator) -> tuple[int, int]:
    """Run speculative rounds on a context-free synthetic model until 2 tokens are out."""
    out: list[int] = []
    while len(out) < 2:
        pos = len(out)
        k = min(gamma, len(zs) - 1 - pos)
        draft = [int(torch.multinomial(qs[pos + i], 1, generator=gen)) for i in range(k)]
        v = verify(draft, qs[pos : pos + k], zs[pos : pos + k + 1], eta=eta, temperature=1.0, generator=gen)
        out += draft[: v.accepted] + [v.next_token]
    return out[0], out[1]


def test_eta_zero_reproduces_target_distribution_chi_square():
    """Speculative sampling with eta = 0: the first two tokens follow p0 x p1 exactly."""
    torch.manual_seed(1)
    V, n = 5, 3_000
    zs = torch.randn(4, V) * 1.5
    qs = torch.softmax(torch.randn(4, V) * 1.5, -1)  # a drafter that disagrees with the target
    p = torch.softmax(zs, -1)
    gen = torch.Generator().manual_seed(123)
    counts = Counter(_simulate_two_tokens(zs, qs, eta=0.0, gamma=3, gen=gen) for _ in range(n))
    joint = (p[0][:, None] * p[1][None, :]).flatten().double()
    expected = joint / joint.sum() * n
    observed = torch.tensor([counts.get((a, b), 0) for a in range(V) for b in range(V)], dtype=torch.float64)
    stat = chisquare(observed.numpy(), expected.double().numpy())
    assert stat.pvalue > 1e-3, stat
    # the same test rejects eta > 0 (deliberately not lossless)
    gen = torch.Generator().manual_seed(123)
    biased = Counter(_simulate_two_tokens(zs, qs, eta=20.0, gamma=3, gen=gen) for _ in range(n))
    observed = torch.tensor([biased.get((a, b), 0) for a in range(V) for b in range(V)], dtype=torch.float64)
    assert chisquare(observed.numpy(), expected.double().numpy()).pvalue < 1e-4


def test_eta_zero_first_token_distribution_with_real_tiny_models(tiny, other):
    """End to end on tiny models: the first answer token's distribution is the target's."""
    tok, model = tiny
    ids = _prompt(tok)
    draft_ids = _prompt(tok, context="She spent eleven years there.")
    temp = 0.3  # sharpen the random model so a few hundred samples suffice
    with torch.inference_mode():
        z = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    p = torch.softmax(z / temp, -1)
    target, dstate = KVState(model), KVState(other)
    n = 300
    firsts = []
    for seed in range(n):
        drafter = LMDrafter(other, draft_ids, state=dstate, min_confidence=0.0)
        r = rapid_generate(target, drafter, tok, ids, on_token=None,
                           config=RapidConfig(max_new_tokens=1, temperature=temp, eta=0.0, seed=seed))
        firsts.append(r.token_ids[0] if r.token_ids else tok.eos_token_id)
    top = [t for t in torch.argsort(p, descending=True)[:8].tolist() if p[t] * n >= 5]
    counts = Counter(firsts)
    obs = [counts.get(t, 0) for t in top]
    exp = [float(p[t]) * n for t in top]
    rest_obs, rest_exp = n - sum(obs), n - sum(exp)
    if rest_exp >= 5:
        obs.append(rest_obs)
        exp.append(rest_exp)
    else:  # fold a negligible remainder into the first bin
        obs[0] += rest_obs
        exp[0] += rest_exp
    assert len(obs) >= 2
    assert chisquare(obs, exp).pvalue > 1e-3


# -- greedy: exact equality with target-only decoding -------------------------------------------


@pytest.mark.parametrize("kind", ["llm", "hybrid", "ngram", "hybrid_whole", "ngram_cost", "hybrid_cost"])
def test_greedy_eta_zero_equals_target_greedy(tiny, other, kind):
    tok, model = tiny
    for question in ("What is the capital of France?", "How long did she stay?"):
        ids = _prompt(tok, question=question)
        ref = generate(model, tok, ids, max_new_tokens=24)
        draft_ids = _prompt(tok, context="Paris is the capital of France. The quick brown fox.", question=question)
        llm = LMDrafter(other, draft_ids, min_confidence=0.0)  # a drafter that is often wrong
        drafter = {"llm": llm, "ngram": NgramDrafter(draft_ids),
                   "hybrid": HybridDrafter(NgramDrafter(draft_ids), llm),
                   "hybrid_whole": HybridDrafter(NgramDrafter(draft_ids, fallback_ids=ids), llm),
                   "ngram_cost": NgramDrafter(ids, min_agreement=0.5, length=DraftLength()),
                   "hybrid_cost": HybridDrafter(NgramDrafter(draft_ids, min_agreement=0.5, length=DraftLength()),
                                                llm)}[kind]
        pieces: list[str] = []
        res = rapid_generate(KVState(model), drafter, tok, ids, on_token=pieces.append,
                             config=RapidConfig(gamma=4, eta=0.0, temperature=0.0, max_new_tokens=24))
        assert res.token_ids == ref.token_ids
        assert "".join(pieces).strip() == res.text == ref.text
        assert res.accepted <= res.drafted and res.target_calls <= len(res.token_ids) + 1
        if not kind.startswith("ngram"):
            assert res.drafted > 0


def test_same_weights_drafter_is_accepted_more_than_other_weights(tiny, other):
    tok, model = tiny
    ids = _prompt(tok)
    same = rapid_generate(KVState(model), LMDrafter(model, ids, min_confidence=0.0), tok, ids,
                          config=RapidConfig(gamma=4, max_new_tokens=16))
    assert same.acceptance_rate == 1.0  # identical context and weights: every draft agrees
    diff = rapid_generate(KVState(model), LMDrafter(other, ids, min_confidence=0.0), tok, ids,
                          config=RapidConfig(gamma=4, max_new_tokens=16))
    assert diff.acceptance_rate < same.acceptance_rate


def test_eta_pulls_greedy_output_toward_the_drafter(tiny, other):
    tok, model = tiny
    ids = _prompt(tok)
    base = rapid_generate(KVState(model), LMDrafter(other, ids, min_confidence=0.0), tok, ids,
                          config=RapidConfig(gamma=4, eta=0.0, max_new_tokens=16))
    pulled = rapid_generate(KVState(model), LMDrafter(other, ids, min_confidence=0.0), tok, ids,
                            config=RapidConfig(gamma=4, eta=1000.0, tail=0.0, max_new_tokens=16))
    assert pulled.acceptance_rate > base.acceptance_rate


# -- caches ----------------------------------------------------------------------------------


def test_caches_stay_consistent_after_cropping(tiny, other):
    tok, model = tiny
    ids = _prompt(tok)
    target, dstate = KVState(model), KVState(other)
    draft_ids = _prompt(tok, context="Paris is the capital of France.")
    res = rapid_generate(target, LMDrafter(other, draft_ids, state=dstate, min_confidence=0.0), tok, ids,
                         config=RapidConfig(gamma=5, max_new_tokens=20))
    assert res.drafted > res.accepted  # rejections happened, so caches were cropped
    for state in (target, dstate):
        assert state.cache.get_seq_length() == len(state.tokens)
        fresh = KVState(state.model)
        fresh.feed(state.tokens)
        for a, b in zip(state.cache.layers, fresh.cache.layers):
            torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-5)
    assert target.tokens == ids + res.token_ids[:-1] or target.tokens[: len(ids)] == ids
    # the state is reusable: a second run from the same caches gives the same answer
    again = rapid_generate(target, LMDrafter(other, draft_ids, state=dstate, min_confidence=0.0), tok, ids,
                           config=RapidConfig(gamma=5, max_new_tokens=20))
    assert again.token_ids == res.token_ids


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(gamma=0), dict(gamma=-3), dict(eta=-0.5), dict(eta=float("nan")),
                                    dict(temperature=-1.0), dict(max_new_tokens=0)])
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        RapidConfig(**kwargs)


def test_different_tokenizers_are_refused(tiny, tmp_path):
    tok, _ = tiny
    odd = AutoTokenizer.from_pretrained(build_tiny_decoder(tmp_path / "odd", vocab_size=300))
    with pytest.raises(ValueError, match="tokenizer"):
        check_same_tokenizer(tok, odd)
    check_same_tokenizer(tok, AutoTokenizer.from_pretrained(tok.name_or_path))


def test_every_drafter_has_what_the_loop_calls():
    from longrag.generation.rapid import Drafter

    wanted = {name for name in vars(Drafter) if not name.startswith("_")}
    assert wanted == {"propose", "observe"}
    for cls in (LMDrafter, NgramDrafter, HybridDrafter):
        assert all(callable(getattr(cls, name, None)) for name in wanted), cls


def test_ngram_drafter_copies_from_reference():
    d = NgramDrafter([5, 6, 7, 8, 9, 6, 7, 1, 2], max_ngram=2)
    assert d.propose([6, 7], 3).tokens == [1, 2]  # most recent match of the bigram
    assert d.propose([9, 5], 3).tokens == [6, 7, 8]  # falls back to the unigram "5"
    assert d.propose([42], 3).tokens == [] and d.misses == 1
    strict = NgramDrafter([5, 6, 7, 8, 9, 6, 7, 1, 2], max_ngram=2, min_ngram=2)
    assert strict.propose([6, 7], 3).tokens == [1, 2]
    assert strict.propose([9, 5], 3).tokens == []  # a 1-gram match is not used
    with pytest.raises(ValueError):
        NgramDrafter([1, 2], min_ngram=0)
    wide = NgramDrafter([5, 6, 7], max_ngram=2, fallback_ids=[40, 41, 42, 6, 9])
    assert wide.propose([5, 6], 2).tokens == [7]  # the reference first ...
    assert wide.propose([40, 41], 2).tokens == [42, 6]  # ... then the fallback (the whole context)
    assert wide.propose([77], 2).tokens == []


def test_ngram_drafter_skips_ambiguous_matches():
    # "1 2" is followed by 3, 4 and 5 (agreement 1/3); "7 8" always by 9
    ref = [1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 5, 0, 7, 8, 9, 0, 7, 8, 9, 6]
    loose = NgramDrafter(ref, max_ngram=2, min_ngram=2)
    assert loose.propose([1, 2], 2).tokens == [5, 0]  # the most recent continuation
    gated = NgramDrafter(ref, max_ngram=2, min_ngram=2, min_agreement=0.5)
    assert gated.propose([1, 2], 2).tokens == []
    assert gated.propose([7, 8], 3).tokens == [9, 6]
    with pytest.raises(ValueError):
        NgramDrafter(ref, min_agreement=1.5)


def test_draft_length_follows_acceptance_and_verification_cost():
    fresh = DraftLength(slope=0.15, acceptance=0.5)
    k0 = fresh.best(10)
    assert 1 <= k0 <= 3  # a coin-flip acceptance: short drafts
    good = DraftLength(slope=0.15, acceptance=0.5)
    for _ in range(10):
        k = good.best(10)
        good.observe_draft(k, k)  # every draft fully accepted
    assert good.best(10) >= k0 + 3 and good.acceptance > 0.8
    bad = DraftLength(slope=0.15, acceptance=0.5)
    for _ in range(10):
        bad.observe_draft(max(1, bad.best(10)), 0)  # the first drafted token always wrong
    assert bad.best(10) == 0  # plain target steps
    for _ in range(30):
        bad.observe_draft(0, 0)  # rounds without a draft: the estimate drifts back to the prior
    assert bad.best(10) >= 1  # drafting (probing) again
    # the verification cost line is measured: flat (a GPU) -> longer drafts, steep -> shorter
    flat, steep = DraftLength(slope=0.15, acceptance=0.7), DraftLength(slope=0.15, acceptance=0.7)
    for k in (0, 1, 3, 6, 10) * 4:
        flat.observe_verify(k, 0.1)
        steep.observe_verify(k, 0.1 * (1 + 0.6 * k))
    assert flat.slope < 0.02 and 0.5 < steep.slope < 0.6
    assert flat.best(10) > DraftLength(slope=0.15, acceptance=0.7).best(10) > steep.best(10)
    for bad_args in ({"slope": -1}, {"acceptance": 1.0}, {"prior_weight": 0}, {"recover": 2}, {"draft_cost": -1}):
        with pytest.raises(ValueError):
            DraftLength(**bad_args)


def test_carried_estimates_start_the_next_answer_where_the_last_one_ended():
    bad = DraftLength.for_llm()
    for k in (0, 2, 5) * 3:
        bad.observe_verify(k, 0.1 * (1 + 0.5 * k))
    for _ in range(6):
        bad.observe_draft(max(1, bad.best(10)), 0)  # LLM drafts always rejected
    assert bad.best(10) == 0
    nxt = bad.carried(weight=8)
    assert nxt.best(10) == 0 and DraftLength.for_llm().best(10) >= 1  # no probe at the old prior
    assert abs(nxt.acceptance - bad.acceptance) < 1e-9 and abs(nxt.slope - bad.slope) < 1e-9
    for _ in range(40):
        nxt.observe_draft(0, 0)  # probing drifts back to the carried acceptance, not to 0.7
    assert nxt.acceptance < 0.2
    # a carried estimate still moves: a few fully accepted drafts on the next document lift it
    for _ in range(6):
        nxt.observe_draft(4, 4)
    assert nxt.acceptance > 0.7
    with pytest.raises(ValueError):
        bad.carried(weight=0)
    store = LearntLengths()
    made = store.start(("m", "llm", 14), DraftLength.for_llm)
    assert made.acceptance == pytest.approx(0.7)  # nothing learnt yet: the prior
    store.keep(("m", "llm", 14), bad)
    assert store.start(("m", "llm", 14), DraftLength.for_llm).best(10) == 0
    assert store.start(("m", "llm", 13), DraftLength.for_llm).acceptance == pytest.approx(0.7)  # other key


# -- the QA mode --------------------------------------------------------------------------------

DOC = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. "
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway. "
    "Their leader Rollo agreed to swear fealty to King Charles III of West Francia.\n\n"
    "The Norman dynasty had a major political, cultural and military impact on medieval Europe. "
) * 6


def _pipe(tiny_decoder_dir, **settings) -> QAPipeline:
    s = Settings(**settings) if settings else get_settings()
    corpus = Corpus(settings=s)
    corpus.ingest_bytes(DOC.encode(), "normans.txt")
    return QAPipeline(corpus, settings=s, decoder_name=str(tiny_decoder_dir))


def test_rapid_mode_answers_with_stats_evidence_and_streaming(tiny_decoder_dir):
    pipe = _pipe(tiny_decoder_dir)
    assert "rapid" in MODES
    streamed: list[str] = []
    q = Question("Who was the Norman leader?", mode="rapid", max_new_tokens=10,
                 options={"budget_tokens": 64, "threshold": 0.0, "drafter": "llm"})
    ans = pipe.ask(q, streamed.append)
    assert ans.mode == "rapid" and "".join(streamed).strip() == ans.answer
    for key in ("acceptance_rate", "mean_accepted", "drafted", "accepted"):
        assert key in ans.stats
    assert ans.stats["drafted"] > 0 and 0 <= ans.stats["acceptance_rate"] <= 1
    assert (ans.stats["eta"], ans.stats["tail"]) == (0.0, 0.1)
    assert ans.stats["drafter_weights"] == "fp16"  # the default: half-precision one-token drafter steps
    budget = ans.stats["drafter_budget_tokens"]
    assert budget == max(64, -(-ans.stats["context_tokens"] // 24))
    assert 0 < ans.stats["drafter_context_tokens"] <= budget < ans.stats["context_tokens"]
    assert -1 <= ans.stats["drafter_top_relevance"] <= 1  # a dense cosine, over the threshold (0 here)
    assert ans.evidence and all(DOC[e.start : e.end] == e.text for e in ans.evidence)
    assert set(ans.timings) == {"retrieval_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    json.dumps(ans.to_dict())
    # greedy, eta = 0: the same answer as the full mode's target-only decoding
    full = pipe.ask(Question("Who was the Norman leader?", mode="full", max_new_tokens=10, kv="full"))
    assert ans.answer == full.answer


@pytest.mark.parametrize("retriever", ["hybrid", "bm25", "situated"])
def test_rapid_mode_drafts_on_default_options(tiny_decoder_dir, retriever):
    # no threshold option: the default threshold applies to dense cosines whatever ranks the chunks
    # (a fused hybrid score never reaches it, which once made every default answer target-only)
    pipe = _pipe(tiny_decoder_dir, retriever=retriever)
    ans = pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=8))
    assert not ans.stats["fallback_target_only"] and ans.stats["drafter"] == "hybrid"
    assert ans.stats["drafter_chunks"] and ans.stats["drafter_context_tokens"] > 0
    assert ans.stats["target_calls"] >= 1 and ans.stats["ngram_whole_context"] is True
    # a retriever named by the question ranks the chunks too (the threshold still on cosines)
    other = "bm25" if retriever != "bm25" else "hybrid"
    asked = pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=8, retriever=other))
    assert not asked.stats["fallback_target_only"] and asked.stats["drafter_chunks"]


def test_rapid_mode_empty_retrieval_and_bad_options(tiny_decoder_dir):
    pipe = _pipe(tiny_decoder_dir)
    ans = pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=6,
                            options={"threshold": 2.0}))
    assert ans.stats["fallback_target_only"] and ans.stats["drafted"] == 0 and ans.stats["drafter"] is None
    assert ans.stats["drafter_top_relevance"] is None
    for bad in ({"gamma": 0}, {"eta": -1}, {"drafter": "oracle"}, {"gamma": "many"}, {"drafter_weights": "int2"},
                {"tail": 1.5}, {"tail": -0.1}, {"tail": "thin"}, {"consensus": "yes"}, {"consensus": 1},
                {"residual": "no"}, {"residual": 0}):
        with pytest.raises(InvalidRequestError):
            pipe.ask(Question("Who was the Norman leader?", mode="rapid", options=bad))
    with pytest.raises(InvalidRequestError, match="kv"):
        pipe.ask(Question("Who was the Norman leader?", mode="rapid", kv="paged"))
    # bad settings stop at Settings(), before any question (tests/test_config.py: the CLI's message)
    for bad, match in (({"rapid_min_ngram": 4, "rapid_max_ngram": 3}, "MIN_NGRAM"),
                       ({"rapid_draft_length": "forever"}, "rapid.draft_length"),
                       ({"rapid_drafter_kind": "oracle"}, "rapid.drafter_kind"),
                       ({"rapid_ngram_min_agreement": 1.5}, "rapid.ngram_min_agreement"),
                       ({"rapid_verify_slope": -0.1}, "rapid.verify_slope")):
        with pytest.raises(ValidationError, match=match):
            Settings(**bad)


@pytest.mark.parametrize("flag", ["consensus", "residual"])
def test_rapid_mode_bool_options(tiny_decoder_dir, flag):
    pipe = _pipe(tiny_decoder_dir)
    def ask(**options):
        return pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=8,
                                 options={"threshold": 0.0, "drafter": "llm", **options}))
    plain, flagged = ask(), ask(**{flag: True})
    assert plain.stats[flag] is False and flagged.stats[flag] is True
    assert flagged.answer == plain.answer  # eta 0: lossless with or without it
    assert _pipe(tiny_decoder_dir, **{f"rapid_{flag}": True}).ask(
        Question("Who was the Norman leader?", mode="rapid", max_new_tokens=4)).stats[flag] is True


def test_rapid_mode_reads_exactly_its_registered_options(tiny_decoder_dir):
    # the keys a request may set (register_mode) and the keys the mode reads are two lists
    class ReadKeys(dict):
        def __init__(self) -> None:
            super().__init__()
            self.read: set[str] = set()

        def __bool__(self) -> bool:
            return True

        def get(self, key, default=None):
            self.read.add(key)
            return default

    options = ReadKeys()
    _pipe(tiny_decoder_dir).ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=4,
                                         options=options))
    assert options.read == MODE_OPTIONS["rapid"]


def test_rapid_mode_draft_lengths_give_the_same_greedy_answer(tiny_decoder_dir):
    def ask(pipe, **options):
        return pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=12,
                                 options={"budget_tokens": 64, "threshold": 0.0, **options}))

    cost = ask(_pipe(tiny_decoder_dir))  # the default hybrid, cost-aware lengths
    fixed_pipe = _pipe(tiny_decoder_dir, rapid_draft_length="fixed")
    fixed = ask(fixed_pipe)
    # greedy eta 0: lossless either way (the tiny model's tokens may decode to an empty string)
    assert cost.answer == fixed.answer and cost.stats["generated_tokens"] == fixed.stats["generated_tokens"] > 0
    assert (cost.stats["draft_length"], fixed.stats["draft_length"]) == ("cost", "fixed")
    assert ask(fixed_pipe, drafter="llm").stats["draft_length"] is None  # the paper's drafter: gamma + confidence


def test_rapid_mode_warm_start_carries_estimates_between_answers(tiny_decoder_dir, monkeypatch):
    from longrag.services.modes import rapid as mode

    def ask(pipe):
        return pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=12,
                                 options={"budget_tokens": 64, "threshold": 0.0}))

    monkeypatch.setattr(mode, "LEARNT", LearntLengths())  # this process's store, fresh for the test
    cold = ask(_pipe(tiny_decoder_dir, rapid_warm_start=False))
    assert cold.stats["warm_start"] is False and not mode.LEARNT._last  # nothing kept without warm start
    first = ask(_pipe(tiny_decoder_dir))
    kept = dict(mode.LEARNT._last)
    assert first.stats["warm_start"] is True and {key[4] for key in kept} == {"ngram", "llm"}
    second = ask(_pipe(tiny_decoder_dir))
    # the second answer started from the first's estimates and left its own; greedy output unchanged
    assert all(mode.LEARNT._last[key] is not kept[key] for key in kept)
    assert cold.answer == first.answer == second.answer


def test_rapid_mode_refuses_drafter_with_other_tokenizer(tiny_decoder_dir, tmp_path):
    odd = build_tiny_decoder(tmp_path / "odd-vocab", vocab_size=300)
    pipe = _pipe(tiny_decoder_dir, rapid_drafter=str(odd))
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=4))


def test_rapid_mode_with_another_same_tokenizer_drafter(tiny_decoder_dir, other_dir):
    pipe = _pipe(tiny_decoder_dir, rapid_drafter=str(other_dir))
    ans = pipe.ask(Question("Who was the Norman leader?", mode="rapid", max_new_tokens=8,
                            options={"threshold": 0.0, "budget_tokens": 64, "drafter": "llm"}))
    assert ans.stats["drafter_model"] == str(other_dir)
    full = pipe.ask(Question("Who was the Norman leader?", mode="full", max_new_tokens=8, kv="full"))
    assert ans.answer == full.answer  # lossless at eta = 0, greedy


def test_rapid_mode_fp32_drafter_weights_give_the_same_greedy_answer(tiny_decoder_dir):
    pipe = _pipe(tiny_decoder_dir)
    opts = {"budget_tokens": 64, "threshold": 0.0, "drafter": "llm"}
    q = "Who was the Norman leader?"
    a32 = pipe.ask(Question(q, mode="rapid", max_new_tokens=10, options={**opts, "drafter_weights": "fp32"}))
    a16 = pipe.ask(Question(q, mode="rapid", max_new_tokens=10, options={**opts, "drafter_weights": "fp16"}))
    assert (a32.stats["drafter_weights"], a16.stats["drafter_weights"]) == ("fp32", "fp16")
    assert a32.answer == a16.answer and a32.stats["drafted"] > 0
    ngram = pipe.ask(Question(q, mode="rapid", max_new_tokens=10, options={**opts, "drafter": "ngram"}))
    assert ngram.stats["drafter_weights"] is None and ngram.answer == a32.answer  # no LLM drafter built


def test_rapid_mode_on_a_sentencekv_target_answers_as_sentencekv_decoding(tiny_decoder_dir):
    pipe = _pipe(tiny_decoder_dir, sentencekv_budget=64, sentencekv_sink=8, sentencekv_recent=8)
    q = "Who was the Norman leader?"
    ans = pipe.ask(Question(q, mode="rapid", max_new_tokens=10, kv="sentencekv",
                            options={"budget_tokens": 64, "threshold": 0.0, "drafter": "llm"}))
    assert ans.stats["kv"] == "sentencekv" and ans.stats["kv_compressed"] and ans.stats["drafted"] > 0
    assert ans.stats["kv_bytes"] < ans.stats["kv_bytes_full"]
    full = pipe.ask(Question(q, mode="full", max_new_tokens=10, kv="sentencekv"))
    assert full.stats["kv"] == "sentencekv" and full.stats["kv_cache_reused"]  # the document's stored cache
    assert ans.answer == full.answer  # greedy, eta = 0: exactly SentenceKV's own decoding
    # a short context stays on the full cache by default (SentenceKV only above its minimum context)
    short = pipe.ask(Question(q, mode="rapid", max_new_tokens=4, options={"threshold": 0.0}))
    assert short.stats["kv"] == "full"


# -- real model --------------------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_rapid_greedy_matches_target_and_accepts_most_drafts():
    from longrag.models.registry import load_decoder

    dec = load_decoder("smollm2-135m-instruct")
    tok, model = dec.tokenizer, dec.model
    para = ("Rollo was a Viking leader who founded the Duchy of Normandy in 911. "
            "The duchy later became a powerful feudal state. ")
    filler = "The weather in the valley was mild and the harvest was good that year. " * 40
    context = filler + para + filler
    q = "Who founded the Duchy of Normandy?"
    ids = encode_chat(tok, answer_messages(q, context))
    ref = generate(model, tok, ids, max_new_tokens=16)
    retrieved = retrieve_context(context, tok, lambda cs: [1.0 if "Rollo" in context[c.start:c.end] else 0.0
                                                           for c in cs], chunk_tokens=128, budget_tokens=128)
    assert "Rollo" in retrieved.text
    draft_ids = encode_chat(tok, answer_messages(q, retrieved.text))
    target, dstate = KVState(model), KVState(model)
    res = rapid_generate(target, LMDrafter(model, draft_ids, state=dstate), tok, ids,
                         config=RapidConfig(max_new_tokens=16))
    assert res.token_ids == ref.token_ids  # lossless at eta = 0 on the real model
    assert res.accepted > 0 and res.target_calls < len(res.token_ids), res.stats()
    pulled = rapid_generate(target, LMDrafter(model, draft_ids, state=dstate), tok, ids,
                            config=RapidConfig(max_new_tokens=16, eta=5.0))
    assert pulled.acceptance_rate >= res.acceptance_rate, (pulled.stats(), res.stats())
    # the fp16-weight twin (the product's default drafter) is still lossless and mostly accepted
    twin = load_decoder("smollm2-135m-instruct", weights="fp16").model
    half = rapid_generate(target, LMDrafter(twin, draft_ids), tok, ids, config=RapidConfig(max_new_tokens=16))
    assert half.token_ids == ref.token_ids
    assert half.acceptance_rate >= 0.8 * res.acceptance_rate, (half.stats(), res.stats())
