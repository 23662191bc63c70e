"""RAPID's benchmark-only drafter (bench/rapid_variants.py): the adaptive hybrid (``hybrid_plus``)."""

from __future__ import annotations

from rapid_fixtures import one_thread, other, other_dir, tiny  # noqa: F401 - fixtures
from rapid_fixtures import prompt as _prompt

from bench.rapid_variants import AdaptiveHybridDrafter
from longrag.generation.decoding import generate
from longrag.generation.rapid import Draft, HybridDrafter, KVState, LMDrafter, NgramDrafter, RapidConfig, rapid_generate


class Never(NgramDrafter):
    """An n-gram drafter whose lookup never matches."""

    def propose(self, generated, gamma, **kw):
        return Draft([], None, "ngram")


class Always(NgramDrafter):
    """An n-gram drafter whose lookup always matches."""

    def propose(self, generated, gamma, **kw):
        return Draft([1] * 3, None, "ngram")


class StubLLM:
    def propose(self, generated, gamma, **kw):
        return Draft([1] * gamma, None, "llm")


def test_adaptive_hybrid_greedy_eta_zero_equals_target_greedy(tiny, other):
    """Whole-context n-gram lookup + adaptive arm choice stays lossless (rejections and crops happen)."""
    tok, model = tiny
    for question in ("What is the capital of France?", "How long did she stay?"):
        ids = _prompt(tok, question=question)
        ref = generate(model, tok, ids, max_new_tokens=24)
        draft_ids = _prompt(tok, context="Paris is the capital of France. The quick brown fox.", question=question)
        llm = LMDrafter(other, draft_ids, min_confidence=0.0)  # a drafter that is often wrong
        drafter = AdaptiveHybridDrafter(NgramDrafter(draft_ids, fallback_ids=ids), llm)
        pieces: list[str] = []
        res = rapid_generate(KVState(model), drafter, tok, ids, on_token=pieces.append,
                             config=RapidConfig(gamma=4, eta=0.0, temperature=0.0, max_new_tokens=24))
        assert res.token_ids == ref.token_ids
        assert "".join(pieces).strip() == res.text == ref.text
        assert res.accepted <= res.drafted and res.target_calls <= len(res.token_ids) + 1
        assert res.drafted > 0


def test_adaptive_hybrid_drafts_with_the_llm_only_while_it_pays():
    def run(llm_tokens: int, llm_s: float, plain_s: float) -> list[bool]:
        hyb = AdaptiveHybridDrafter(Never([1]), llm=None, explore=2, reprobe=4)  # type: ignore[arg-type]
        picks = []
        for _ in range(12):
            use = hyb.choose(("llm", "plain")) == "llm"
            picks.append(use)
            if use:
                hyb.observe(Draft([1] * 4, None, "llm"), llm_tokens - 1, llm_s)
            else:
                hyb.observe(Draft([], None, "none"), 0, plain_s)
        return picks

    slow = run(llm_tokens=2, llm_s=0.5, plain_s=0.2)  # 4 tok/s vs 5 tok/s: plain steps win
    assert slow[:3] == [True, True, False] and sum(slow[3:]) <= 3  # only the periodic re-probes
    fast = run(llm_tokens=5, llm_s=0.5, plain_s=0.2)  # 10 tok/s vs 5 tok/s: the LLM wins
    assert fast[:3] == [True, True, False] and sum(fast[3:]) >= 6
    # the product's (not adaptive) hybrid: the LLM on every miss
    fixed = HybridDrafter(Never([1]), llm=StubLLM())  # type: ignore[arg-type]
    assert all(fixed.propose([1], 4, temperature=0.0, generator=None).source == "llm" for _ in range(5))
    # three arms when the lookup matched: slow wrong n-gram drafts lose to plain target steps
    hyb = AdaptiveHybridDrafter(Never([1]), llm=None, reprobe=100)  # type: ignore[arg-type]
    cost = {"ngram": (1, 0.45), "llm": (2, 0.5), "plain": (1, 0.2)}  # tokens, seconds per round
    picks = []
    for _ in range(10):
        arm = hyb.choose(("ngram", "llm", "plain"))
        picks.append(arm)
        tokens, secs = cost[arm]
        hyb.observe(Draft([] if arm == "plain" else [1] * 6, None, "none" if arm == "plain" else arm), tokens - 1, secs)
    assert picks[:5] == ["ngram", "ngram", "llm", "llm", "plain"] and set(picks[5:]) == {"plain"}
    # the product's hybrid on a match: the n-gram draft
    assert HybridDrafter(Always([1]), llm=StubLLM()).propose(  # type: ignore[arg-type]
        [1], 4, temperature=0.0, generator=None).source == "ngram"
