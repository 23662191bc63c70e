"""The explicit-cache decoding loop matches transformers' own greedy generate (tiny model)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrag.generation.decoding import generate
from longrag.generation.prompts import answer_messages, encode_chat


def test_greedy_matches_hf_generate_and_streams(tiny_decoder_dir):
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    ids = encode_chat(tok, answer_messages("What is the capital?", "Paris is the capital of France."))
    pieces: list[str] = []
    res = generate(model, tok, ids, max_new_tokens=12, on_token=pieces.append)
    ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    if tok.eos_token_id in ref:
        ref = ref[: ref.index(tok.eos_token_id)]
    assert res.token_ids == ref
    assert "".join(pieces).strip() == res.text
    assert res.prompt_tokens == len(ids) and res.ttft_ms > 0 and res.total_ms >= res.ttft_ms
    # each chosen token's log-probability under the model's own distribution at that step
    with torch.inference_mode():
        logits = model(torch.tensor([ids + res.token_ids])).logits[0, len(ids) - 1 : -1]
    want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(res.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(res.logprobs), want, atol=1e-4)
    assert res.confidence == pytest.approx(float(want.mean().exp()), abs=1e-4) and 0 < res.confidence <= 1


def test_chunked_prefill_equals_single_pass(tiny_decoder_dir):
    from transformers import DynamicCache

    from longrag.generation.decoding import prefill

    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    ids = torch.randint(3, 300, (1, 50))
    a = prefill(model, ids, DynamicCache(), chunk=7)
    b = prefill(model, ids, DynamicCache(), chunk=1000)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_sampling_is_repeatable_with_seed(tiny_decoder_dir):
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    ids = encode_chat(tok, answer_messages("q", "c"))
    a = generate(model, tok, ids, max_new_tokens=6, temperature=1.0, seed=3)
    b = generate(model, tok, ids, max_new_tokens=6, temperature=1.0, seed=3)
    assert a.token_ids == b.token_ids


def test_rejected_answer_is_decoded_again_without_its_first_token(tiny_decoder_dir):
    """accept() turning an answer down re-decodes from the cropped prompt cache, and the result
    equals a fresh greedy decode with that first token excluded."""
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()
    ids = encode_chat(tok, answer_messages("What is the capital?", "Paris is the capital of France."))
    first = generate(model, tok, ids, max_new_tokens=6)
    seen: list[str] = []
    again = generate(model, tok, ids, max_new_tokens=6, accept=lambda t: bool(seen.append(t)) or len(seen) > 1)
    assert seen[0] == first.text and again.rejected == (first.text,)
    assert again.token_ids and again.token_ids[0] != first.token_ids[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].clone()
    logits[first.token_ids[0]] = float("-inf")
    assert again.token_ids[0] == int(logits.argmax())
    # the tries are capped: the last answer comes back whatever accept says
    capped = generate(model, tok, ids, max_new_tokens=6, accept=lambda t: False, max_tries=3)
    assert len(capped.rejected) == 2
