"""Half-precision weight twins (generation/precision.py): shared tensors, fp32 prefill, close steps."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrag.generation.fastkv import new_cache
from longrag.generation.precision import HalfWeightLinear, half_weight_twin, weights_of
from longrag.generation.prompts import answer_messages, encode_chat


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir):
    return (AutoTokenizer.from_pretrained(tiny_decoder_dir),
            AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval())


def _ids(tok) -> torch.Tensor:
    return torch.tensor([encode_chat(tok, answer_messages("Who led the Normans?",
                                                          "Rollo led the Normans to Normandy. " * 6))])


@pytest.mark.parametrize("weights", ["fp16", "bf16"])
def test_twin_shares_every_source_tensor_and_adds_only_half_copies(tiny, weights):
    _, model = tiny
    twin = half_weight_twin(model, weights)
    src = {id(p) for p in model.parameters()}
    assert {id(p) for p in twin.parameters()} == src  # nothing copied, nothing new
    halves = [m for m in twin.modules() if isinstance(m, HalfWeightLinear)]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(halves) == n_linear > 0
    assert all(h.half_weight.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[weights] for h in halves)
    assert weights_of(twin) == weights and weights_of(model) == "fp32"
    assert not any(isinstance(m, HalfWeightLinear) for m in model.modules())  # the source is untouched


def test_prefill_blocks_use_the_fp32_weights_and_steps_stay_close(tiny):
    tok, model = tiny
    twin = half_weight_twin(model, "fp16")
    ids = _ids(tok)
    with torch.inference_mode():
        ref_cache, twin_cache = new_cache(), new_cache()
        ref = model(input_ids=ids[:, :-1], cache=ref_cache, use_cache=True).logits
        got = twin(input_ids=ids[:, :-1], cache=twin_cache, use_cache=True).logits
        assert torch.equal(ref, got)  # a long block: exactly the source model
        step_ref = model(input_ids=ids[:, -1:], cache=ref_cache, use_cache=True).logits[0, -1]
        step = twin(input_ids=ids[:, -1:], cache=twin_cache, use_cache=True).logits[0, -1]
    assert step.dtype == torch.float32
    assert not torch.equal(step, step_ref)  # the fp16 copy was used ...
    assert torch.allclose(step, step_ref, atol=5e-3 * float(step_ref.abs().max()))  # ... and is close
    assert int(step.argmax()) == int(step_ref.argmax())


def test_twin_refuses_bad_weights_and_non_fp32_models(tiny, tiny_decoder_dir):
    _, model = tiny
    with pytest.raises(ValueError, match="weights"):
        half_weight_twin(model, "int4")
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="fp32"):
        half_weight_twin(bf16, "fp16")
