"""fastkv: the growing KV cache and the packed GQA attention give the stock sdpa/DynamicCache results."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from longrag.generation import fastkv
from longrag.generation.decoding import generate


@pytest.fixture(scope="module")
def models(tiny_decoder_dir: Path):
    """The same tiny GQA decoder (4 query heads, 2 KV heads) with stock sdpa and with longrag_sdpa."""
    stock = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    fast = fastkv.use_fast_attention(copy.deepcopy(stock))
    assert fast.config._attn_implementation == fastkv.ATTN_NAME
    return stock, fast


def _run(model, cache, blocks):
    outs = []
    with torch.inference_mode():
        for block in blocks:
            x = torch.tensor([block])
            outs.append(model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=len(block)).logits[0])
    return outs


def test_growing_cache_and_packed_attention_match_stock_sdpa(models):
    stock, fast = models
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 300, (300,), generator=g).tolist()
    # prefill in two pieces, single steps, and verification-sized blocks (packed path)
    blocks = [prompt[:200], prompt[200:], [7], [8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21]]
    ref = _run(stock, DynamicCache(), blocks)
    cache = fastkv.new_cache()
    got = _run(fast, cache, blocks)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == sum(len(b) for b in blocks)
    layer = cache.layers[0]
    assert layer._k.shape[-2] >= cache.get_seq_length()  # views of one buffer with headroom, no copies
    assert layer.keys.data_ptr() == layer._k.data_ptr() and layer.values.data_ptr() == layer._v.data_ptr()


def test_crop_then_continue_equals_a_fresh_prefill(models):
    _, fast = models
    ids = list(range(10, 130))
    cache = fastkv.new_cache()
    _run(fast, cache, [ids[:100], [3, 4, 5, 6, 7]])  # a rejected draft
    cache.crop(-5)
    assert cache.get_seq_length() == 100
    got = _run(fast, cache, [ids[100:]])[0]
    ref = _run(fast, fastkv.new_cache(), [ids])[0][-20:]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_deepcopy_and_batch_repeat_keep_working(models):
    """CFIC copies prefilled caches and repeats them over a batch of branches."""
    _, fast = models
    cache = fastkv.new_cache()
    _run(fast, cache, [list(range(10, 60))])
    branch = copy.deepcopy(cache)
    branch.batch_repeat_interleave(2)
    with torch.inference_mode():
        out = fast(input_ids=torch.tensor([[5, 6], [7, 8]]), cache=branch, use_cache=True).logits
        one = fast(input_ids=torch.tensor([[7, 8]]), cache=copy.deepcopy(cache), use_cache=True).logits
    torch.testing.assert_close(out[1], one[0], rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 50  # the original is untouched


def test_generation_is_unchanged(models, tiny_decoder_dir: Path):
    from transformers import AutoTokenizer

    stock, fast = models
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    ids = tok("the quick brown fox jumps over the lazy dog")["input_ids"] * 5
    assert generate(stock, tok, ids, max_new_tokens=12).token_ids == generate(fast, tok, ids, max_new_tokens=12).token_ids
