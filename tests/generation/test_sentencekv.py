"""SentenceKV cache: exact fallback, segmentation, budget, bad input, persistence, a real needle."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GPT2Config

from longrag.generation import sentencekv as skv

LONG_TEXT = "The quick brown fox jumps over the lazy dog. She spent eleven years there! What is it? " * 30


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    return model, tok


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


CFG = skv.SentenceKVConfig(budget=64, retention_ratio=2.0, sink=8, recent=8, max_sentence_tokens=16, retention="token")


def test_short_prompt_is_exactly_full_kv(tiny) -> None:
    model, tok = tiny
    ids = _ids(tok, "Paris is the capital of France. What is the capital of France?")
    assert len(ids) <= CFG.full_kv_limit
    cache = skv.new_cache(model, tok, CFG)
    logits = skv.prefill(model, cache, ids)
    ref_cache = DynamicCache()
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor([ids]), cache=ref_cache, use_cache=True).logits[:, -1]
    assert cache.full
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    for tid in (5, 17, 42, 9):
        got = skv.append(model, cache, [tid], generated=True)
        with torch.inference_mode():
            want = model(input_ids=torch.tensor([[tid]]), cache=ref_cache, use_cache=True).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert cache.kv_bytes() == sum(k.numel() * k.element_size() * 2 for k, _, _ in ref_cache)
    # the model is back on sdpa and unaffected afterwards
    assert model.config._attn_implementation == "sdpa"


def test_segmentation_on_token_ids(tiny) -> None:
    _, tok = tiny
    bounds = skv.boundary_token_ids(tok)
    ids = _ids(tok, "The dog. She spent years there!\nWhat is it?")
    sid = skv.segment_sentences(ids, bounds, max_len=100)
    texts = ["".join(tok.decode([t]) for t, s in zip(ids, sid) if s == k) for k in range(sid.max() + 1)]
    assert texts[0] == "The dog."
    assert texts[1].startswith(" She") and texts[1].endswith("!\n")  # a run of boundaries stays together
    assert texts[-1].endswith("?")
    # no punctuation at all: fixed pieces of max_len tokens, ids non-decreasing
    flat = list(range(50, 50 + 37))
    sid = skv.segment_sentences([t for t in flat if t not in bounds], bounds, max_len=10)
    assert (sid[1:] >= sid[:-1]).all() and max(list(sid).count(k) for k in set(sid.tolist())) <= 10
    assert skv.segment_sentences([], bounds, max_len=4).size == 0


def _long_cache(model, tok, text: str, cfg: skv.SentenceKVConfig = CFG):
    ids = _ids(tok, text)
    cache = skv.new_cache(model, tok, cfg)
    logits = skv.prefill(model, cache, ids)
    return ids, cache, logits


def test_prefill_retention_and_decode_selection_respect_budget(tiny) -> None:
    model, tok = tiny
    ids, cache, logits = _long_cache(model, tok, LONG_TEXT)
    n = len(ids)
    assert n > CFG.full_kv_limit and not cache.full
    for layer in cache.layers:
        assert layer.compressed
        pos = layer.pos[:, : layer.size]
        # every head keeps sink + the observation window (>= recent) + r * tau tokens
        assert layer.size == CFG.sink + max(CFG.recent, CFG.window) + CFG.retained
        for h in range(pos.shape[0]):
            kept = set(pos[h].tolist())
            assert set(range(CFG.sink)) <= kept and set(range(n - CFG.recent, n)) <= kept
    assert cache.kv_bytes() < cache.full_kv_bytes(model.config) / 3
    assert cache.peak_prefill_bytes < cache.full_kv_bytes(model.config)
    # decode a few tokens, then check the selection of every layer against the budget
    tid = int(logits.argmax())
    for _ in range(5):
        tid = int(skv.append(model, cache, [tid], generated=True).argmax())
    torch.manual_seed(0)
    total = cache.get_seq_length()
    for layer in cache.layers:
        qbar = torch.randn(model.config.num_attention_heads, layer.ksum.shape[-1])
        pos = layer.pos[:, : layer.size]
        sid = layer.sid[:, : layer.size]
        rows = skv.sentence_rows(cache, layer, qbar, pos, total)
        always = (pos < CFG.sink) | (pos >= total - CFG.recent) | (sid == (cache.gen_sentence if cache.gen_sentence is not None else -2))
        assert rows[always].all()  # sink, recent and the open sentence are always attended
        by_sentence = (rows & ~always).sum(dim=1)
        assert (by_sentence <= CFG.budget).all()
        assert (rows.sum(dim=1) > CFG.sink + CFG.recent).all()  # and some sentences were selected
        # selected rows come in whole sentences (of what the head retained)
        for h in range(rows.shape[0]):
            chosen = set(sid[h][rows[h] & ~always[h]].tolist())
            for s in chosen:
                assert rows[h][sid[h] == s].all()


def test_generation_without_punctuation_and_one_enormous_sentence(tiny) -> None:
    model, tok = tiny
    words = "the quick brown fox jumps over the lazy dog she spent eleven years there "
    for text in (words * 40, words * 40 + "."):  # no punctuation; one 400-word sentence
        cfg = skv.SentenceKVConfig(budget=48, sink=4, recent=4, max_sentence_tokens=500, retention="token")
        assert cfg.sentence_cap == 48  # a bucket can never exceed the budget
        ids, cache, logits = _long_cache(model, tok, text, cfg)
        assert cache.n_sentences >= len(ids) // 48
        res = skv.decode(model, tok, cache, logits, max_new_tokens=6)
        assert torch.isfinite(logits).all() and len(res.token_ids) >= 1
        assert res.compressed and res.kv_bytes < res.kv_bytes_full


def test_batch_size_above_one_is_refused(tiny) -> None:
    model, tok = tiny
    cache = skv.new_cache(model, tok, CFG)
    x = torch.tensor([_ids(tok, "The dog.")] * 2)
    with pytest.raises(skv.SentenceKVError, match="batch size 1"), skv.sentencekv_attention(model):
        model(input_ids=x, cache=cache, use_cache=True, sentencekv=cache)
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_model_type_is_refused(tmp_path: Path) -> None:
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    with pytest.raises(skv.SentenceKVError, match="model types"):
        skv.SentenceKVCache(cfg, CFG, frozenset())


def test_qwen2_arch_runs(tmp_path: Path) -> None:
    from longrag.models.tiny import build_tiny_decoder

    path = build_tiny_decoder(tmp_path / "q", arch="qwen2")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    cfg = skv.SentenceKVConfig(budget=64, sink=8, recent=8, retention="token")
    res, cache = skv.generate(model, tok, _ids(tok, LONG_TEXT), cfg, max_new_tokens=4)
    assert res.compressed and 0 < res.kv_bytes < res.kv_bytes_full


def test_an_unregistered_policy_is_refused() -> None:
    assert set(skv.POLICIES) >= {"sentencekv"}
    with pytest.raises(ValueError, match="unknown policy"):
        skv.SentenceKVConfig(policy="no-such-policy")
    with pytest.raises(ValueError, match="already registered"):
        skv.register_policy("sentencekv", object())  # type: ignore[arg-type]
    assert isinstance(skv.POLICIES["sentencekv"], skv.SentenceRanking)


def test_state_roundtrip_gives_identical_logits(tiny) -> None:
    model, tok = tiny
    ids, cache, _ = _long_cache(model, tok, LONG_TEXT)
    tensors, meta = cache.state_dict()
    again = skv.SentenceKVCache.from_state(model.config, tensors, meta, skv.boundary_token_ids(tok))
    question = _ids(tok, "Question: What is the capital of France?\nAnswer:")
    a = skv.append(model, cache, question)
    b = skv.append(model, again, question)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for _ in range(3):
        t = int(a.argmax())
        a, b = skv.append(model, cache, [t], generated=True), skv.append(model, again, [t], generated=True)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_document_cache_is_built_once_then_reused(tiny, tiny_decoder_dir: Path, data_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from longrag.config import get_settings
    from longrag.models.registry import Decoder
    from longrag.services.kvcache import DocumentKVCache, split_prompt

    model, tok = tiny
    monkeypatch.setenv("LONGRAG_SENTENCEKV_BUDGET", "64")
    monkeypatch.setenv("LONGRAG_SENTENCEKV_SINK", "8")
    monkeypatch.setenv("LONGRAG_SENTENCEKV_RECENT", "8")
    get_settings.cache_clear()
    settings = get_settings()
    dec = Decoder("tiny", model, tok, 4096, "cpu")
    store = DocumentKVCache(settings, dec)
    assert store.config.budget == 64
    prefix, suffix = split_prompt(tok, "What is it?", LONG_TEXT)
    assert tok.decode(suffix).startswith("\n\nQuestion: What is it?")
    span = (0, len(LONG_TEXT))
    first = store.answer("doc1", span, LONG_TEXT, "What is it?", max_new_tokens=5)
    assert not first.reused and first.stats["kv_bytes"] < first.stats["kv_bytes_full"]
    assert list((data_dir / "kvcache" / "doc1").glob("*.safetensors"))
    second = store.answer("doc1", span, LONG_TEXT, "What is it?", max_new_tokens=5)
    assert second.reused and second.result.token_ids == first.result.token_ids
    other = store.answer("doc1", span, LONG_TEXT, "Where did she spend eleven years?", max_new_tokens=5)
    assert other.reused
    store.drop("doc1")
    assert not (data_dir / "kvcache" / "doc1").exists()


@pytest.mark.integration
def test_smollm2_finds_a_needle_with_a_small_budget(datasets: Path) -> None:
    from longrag.generation.prompts import answer_messages, encode_chat
    from longrag.models.registry import load_decoder

    dec = load_decoder("smollm2-135m-instruct")
    book = sorted((datasets / "gutenberg").glob("pg*.txt"))[0].read_text(errors="ignore")
    words = book.split()
    rng = random.Random(3)
    start = rng.randrange(0, max(1, len(words) - 3000))
    hay = " ".join(words[start : start + 1500])
    cut = len(hay) // 2
    cut = hay.find(". ", cut) + 2
    needle = "The secret passcode for the vault is 73915. "
    context = hay[:cut] + needle + hay[cut:]
    ids = encode_chat(dec.tokenizer, answer_messages("What is the secret passcode for the vault?", context))
    # whole-sentence retention: with the paper's per-head token retention this SmolLM2 run answers
    # "7391" (one digit token of the needle was dropped at the prefill) - see docs/sentencekv.md
    cfg = skv.SentenceKVConfig(budget=256, retention_ratio=2.0, retention="sentence")
    assert len(ids) > 4 * cfg.budget
    res, _ = skv.generate(dec.model, dec.tokenizer, ids, cfg, max_new_tokens=24)
    assert "73915" in res.text
    assert res.kv_bytes < res.kv_bytes_full / 2


def test_qa_full_mode_uses_sentencekv_above_the_threshold_and_reuses_it(tiny_decoder_dir: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from longrag.config import get_settings
    from longrag.errors import InvalidRequestError
    from longrag.services.corpus import Corpus
    from longrag.services.qa import QAPipeline, Question

    for k, v in {"BUDGET": "64", "SINK": "8", "RECENT": "8", "MIN_CONTEXT": "200"}.items():
        monkeypatch.setenv(f"LONGRAG_SENTENCEKV_{k}", v)
    get_settings.cache_clear()
    corpus = Corpus(settings=get_settings())
    doc = corpus.ingest_bytes(LONG_TEXT.encode(), "fox.txt").doc_id
    pipe = QAPipeline(corpus, decoder_name=str(tiny_decoder_dir))
    first = pipe.ask(Question("Where did she spend eleven years?", mode="full", max_new_tokens=6))
    st = first.stats
    assert st["kv"] == "sentencekv" and st["kv_budget"] == 64 and not st["kv_cache_reused"]
    assert 0 < st["kv_bytes"] < st["kv_bytes_full"]
    for ev in first.evidence:
        assert LONG_TEXT[ev.start : ev.end] == ev.text
    again = pipe.ask(Question("What jumps over the lazy dog?", doc_ids=[doc], mode="full", max_new_tokens=6))
    assert again.stats["kv_cache_reused"] is True
    forced = pipe.ask(Question("What jumps?", mode="full", kv="full", max_new_tokens=4))
    assert forced.stats["kv"] == "full" and forced.stats["kv_bytes"] == forced.stats["kv_bytes_full"]
    with pytest.raises(InvalidRequestError, match="unknown kv"):
        pipe.ask(Question("What jumps?", mode="full", kv="paged"))


def test_sentence_retention_option_keeps_whole_sentences(tiny) -> None:
    model, tok = tiny
    cfg = skv.SentenceKVConfig(budget=64, sink=8, recent=8, max_sentence_tokens=16, retention="sentence")
    ids, cache, _ = _long_cache(model, tok, LONG_TEXT, cfg)
    sid_all = torch.as_tensor(cache.token_sid[: len(ids)])
    for layer in cache.layers:
        pos = layer.pos[:, : layer.size]
        assert (pos == pos[0]).all()  # the same rows for every head
        kept = pos[0]
        inner = kept[(kept >= cfg.sink) & (kept < len(ids) - cfg.window)]
        assert len(inner) <= cfg.retained
        for s in set(sid_all[inner].tolist()):
            members = torch.nonzero(sid_all == s).view(-1)
            members = members[(members >= cfg.sink) & (members < len(ids) - cfg.window)]
            assert set(members.tolist()) <= set(kept.tolist())


# -- generated blocks and crop (RAPID's target) ----------------------------------------------------


def _layer_state(cache: skv.SentenceKVCache) -> list[tuple]:
    out = []
    for layer in cache.layers:
        n = layer.size
        out.append((n, layer.seen, layer.keys[:, :n].clone(), layer.pos[:, :n].clone(), layer.sid[:, :n].clone(),
                    layer.ksum[:, : cache.n_sentences].clone(), layer.kcount[:, : cache.n_sentences].clone(),
                    None if layer.qsum is None else layer.qsum.clone(), layer.qn))
    return out


def _assert_same_state(a: skv.SentenceKVCache, b: skv.SentenceKVCache) -> None:
    assert (a.token_sid, a.n_sentences, a.gen_sentence, a.get_seq_length()) == \
        (b.token_sid, b.n_sentences, b.gen_sentence, b.get_seq_length())
    if a.gen_sentence is not None:
        assert (a.gen_start, a.gen_len) == (b.gen_start, b.gen_len)
    for x, y in zip(_layer_state(a), _layer_state(b)):
        assert x[:2] == y[:2] and x[-1] == y[-1]
        for u, v in zip(x[2:-1], y[2:-1]):
            assert (u is None) == (v is None)
            if u is not None:
                torch.testing.assert_close(u, v, rtol=0, atol=1e-6)


def test_generated_block_equals_feeding_its_tokens_one_by_one(tiny) -> None:
    model, tok = tiny
    dot = _ids(tok, ".")[0]
    assert dot in skv.boundary_token_ids(tok)
    ids, one, _ = _long_cache(model, tok, LONG_TEXT)
    _, block, _ = _long_cache(model, tok, LONG_TEXT)
    gen = [17, 42, dot, 9, 23, 5, 31]  # a sentence closes inside the block
    steps = torch.cat([skv.append(model, one, [t], generated=True) for t in gen])
    rows = skv.append(model, block, gen, generated=True, keep=len(gen))
    assert rows.shape == steps.shape
    torch.testing.assert_close(rows, steps, rtol=0, atol=1e-4)
    _assert_same_state(one, block)


def test_crop_takes_generated_tokens_back_exactly(tiny) -> None:
    model, tok = tiny
    dot = _ids(tok, ".")[0]
    ids, cache, _ = _long_cache(model, tok, LONG_TEXT)
    _, ref, _ = _long_cache(model, tok, LONG_TEXT)
    n = len(ids)
    held = [17, 42, dot, 9, 23]
    skv.append(model, cache, held, generated=True, keep=5)  # a draft ...
    for keep_len, then in ((n + 4, [8]), (n + 2, [11, 12]), (n + 3, [dot, 6])):  # ... partly rejected, again
        cache.crop(keep_len)
        held = held[: keep_len - n] + then
        skv.append(model, cache, then, generated=True, keep=len(then))
    assert held == [17, 42, 11, dot, 6]
    for t in held:  # reference: the surviving tokens fed one at a time into a fresh cache
        skv.append(model, ref, [t], generated=True)
    _assert_same_state(cache, ref)
    a = skv.append(model, cache, [7], generated=True)
    b = skv.append(model, ref, [7], generated=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(skv.SentenceKVError, match="prompt"):
        cache.crop(n - 1)


def test_crop_never_cuts_into_an_appended_question(tiny) -> None:
    model, tok = tiny
    ids, cache, _ = _long_cache(model, tok, LONG_TEXT)
    question = _ids(tok, "Question: What is it?\nAnswer:")
    skv.append(model, cache, question)
    skv.append(model, cache, [5, 6], generated=True, keep=2)
    cache.crop(len(ids) + len(question))  # the generated part: fine
    with pytest.raises(skv.SentenceKVError, match="question"):
        cache.crop(len(ids) + 1)


@pytest.mark.parametrize("same_weights", [True, False])
def test_rapid_on_a_sentencekv_target_gives_sentencekv_greedy_output(tiny, tiny_decoder_dir, same_weights) -> None:
    from longrag.generation.rapid import KVState, LMDrafter, RapidConfig, autoregressive, rapid_generate

    model, tok = tiny
    ids = _ids(tok, LONG_TEXT + "Question: What did the fox do?\nAnswer:")
    ref, _ = skv.generate(model, tok, ids, CFG, max_new_tokens=20)
    drafter_model = model if same_weights else AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    if not same_weights:  # a drafter that often disagrees: rejections and crops on the SentenceKV target
        gen = torch.Generator().manual_seed(3)
        drafter_model.lm_head.weight = torch.nn.Parameter(torch.randn(drafter_model.lm_head.weight.shape,
                                                                      generator=gen) * 0.05)
    draft_ids = _ids(tok, "The quick brown fox jumps over the lazy dog. Question: What did the fox do?\nAnswer:")
    state = skv.SentenceKVState.from_prompt(model, tok, CFG, ids)
    res = rapid_generate(state, LMDrafter(drafter_model, draft_ids, state=KVState(drafter_model), min_confidence=0.0),
                         tok, ids, config=RapidConfig(gamma=4, max_new_tokens=20))
    assert res.token_ids == ref.token_ids
    assert res.drafted > 0 and res.target_calls < len(res.token_ids) + 1
    again = autoregressive(state, tok, ids, config=RapidConfig(max_new_tokens=20))  # the state is reusable
    assert again.token_ids == ref.token_ids
    if not same_weights:
        assert res.accepted < res.drafted  # some drafts were rejected and cropped away


def test_rapid_on_a_short_uncompressed_sentencekv_prompt_equals_plain_greedy(tiny) -> None:
    from longrag.generation.decoding import generate as plain_generate
    from longrag.generation.rapid import KVState, LMDrafter, RapidConfig, rapid_generate

    model, tok = tiny
    ids = _ids(tok, "Paris is the capital of France. Question: What is the capital of France?\nAnswer:")
    assert len(ids) <= CFG.full_kv_limit  # kept exact (no compression): blocks take the sdpa path
    ref = plain_generate(model, tok, ids, max_new_tokens=12)
    state = skv.SentenceKVState.from_prompt(model, tok, CFG, ids)
    res = rapid_generate(state, LMDrafter(model, ids[-8:], state=KVState(model), min_confidence=0.0), tok, ids,
                         config=RapidConfig(gamma=3, max_new_tokens=12))
    assert state.cache.full and res.token_ids == ref.token_ids and res.drafted > 0
