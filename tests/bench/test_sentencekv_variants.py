"""SentenceKV's benchmark peers (bench/sentencekv_variants.py): StreamingLLM, SnapKV, shared prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench import sentencekv_variants as peers
from longrag.generation import sentencekv as skv

LONG_TEXT = "The quick brown fox jumps over the lazy dog. She spent eleven years there! What is it? " * 30


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval(), AutoTokenizer.from_pretrained(tiny_decoder_dir)


def test_qwen2_arch_and_peer_policies_run(tmp_path: Path) -> None:
    from longrag.models.tiny import build_tiny_decoder

    path = build_tiny_decoder(tmp_path / "q", arch="qwen2")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    for policy in ("snapkv", "streaming"):
        cfg = skv.SentenceKVConfig(budget=64, sink=8, recent=8, policy=policy, retention="token")
        res, cache = skv.generate(model, tok, _ids(tok, LONG_TEXT), cfg, max_new_tokens=4)
        assert res.compressed and 0 < res.kv_bytes < res.kv_bytes_full
        assert cache.layers[0].size <= cfg.sink + max(cfg.recent, cfg.window) + cfg.budget + 4


def test_peer_selection_rules(tiny) -> None:
    model, tok = tiny
    ids = _ids(tok, LONG_TEXT)
    n = len(ids)
    snap = skv.SentenceKVConfig(budget=64, sink=8, recent=8, policy="snapkv", retention="token")
    _, cache = skv.generate(model, tok, ids, snap, max_new_tokens=3)
    for layer in cache.layers:  # tau tokens per head besides the sink and the observation window
        assert layer.size <= snap.sink + max(snap.recent, snap.window) + snap.budget + 3
    stream = skv.SentenceKVConfig(budget=64, sink=8, recent=8, policy="streaming", retention="token")
    _, cache = skv.generate(model, tok, ids, stream, max_new_tokens=3)
    window = stream.budget + stream.recent
    for layer in cache.layers:  # the sink and the last tau + recent prompt tokens, the same for every head
        pos = layer.pos[:, : layer.size]
        assert (pos == pos[0]).all()
        prompt = set(pos[0][pos[0] < n].tolist())
        assert prompt == set(range(stream.sink)) | set(range(n - window, n))
    store_pos = torch.arange(n + 2)[None].expand(2, -1)
    totals = torch.tensor([n + 1, n + 2])
    rows = peers.StreamingPeer().attend(cache, cache.layers[0], torch.zeros(2, 1, 1), store_pos, totals, [])
    for t, total in enumerate(totals.tolist()):
        seen = set(torch.nonzero(rows[t, 0]).view(-1).tolist())
        assert seen == set(range(stream.sink)) | set(range(total - window, total))
    rows = peers.SnapKVPeer().attend(cache, cache.layers[0], torch.zeros(2, 1, 1), store_pos, totals, [])
    assert rows[0, 0].sum() == n + 1 and rows[1, 0].sum() == n + 2  # every retained row before the position


def test_fork_and_to_dynamic_finish_a_shared_prefix_exactly(tiny) -> None:
    model, tok = tiny
    ids = _ids(tok, LONG_TEXT)
    cfg = skv.SentenceKVConfig(budget=64, sink=8, recent=8, max_sentence_tokens=16, retention="token")
    tail = cfg.window
    prefix = skv.new_cache(model, tok, cfg)
    prefix.begin_prefill(ids)
    skv.feed_prompt(model, prefix, ids[:-tail])
    # a fork finishes the prefill exactly as one cache prefilled in two chunks
    ref = skv.new_cache(model, tok, cfg)
    want = skv.prefill(model, ref, ids, chunk=len(ids) - tail)
    forked = peers.fork(prefix, cfg)
    got = skv.feed_prompt(model, forked, ids[-tail:])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not forked.full and all(layer.compressed for layer in forked.layers)
    assert not any(layer.compressed for layer in prefix.layers)  # the shared prefix is untouched
    for t in (5, 17):
        torch.testing.assert_close(skv.append(model, forked, [t], generated=True),
                                   skv.append(model, ref, [t], generated=True), rtol=0, atol=1e-5)
    # another policy from the same prefix
    other = peers.fork(prefix, skv.SentenceKVConfig(budget=64, sink=8, recent=8, policy="streaming", retention="token"))
    skv.feed_prompt(model, other, ids[-tail:])
    assert other.skv.policy == "streaming" and other.layers[0].size < forked.layers[0].size
    # the full-KV peer: the prefix as a DynamicCache, then the tail
    dc = peers.to_dynamic(prefix)
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([ids[-tail:]]), cache=dc, use_cache=True, logits_to_keep=1).logits[:, -1]
        plain = model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[:, -1]
    torch.testing.assert_close(full, plain, rtol=0, atol=1e-4)
    with pytest.raises(skv.SentenceKVError, match="not compressed"):
        peers.fork(forked)
