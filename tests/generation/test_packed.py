"""Pre-packed linear weights (generation/packed.py): same results as nn.Linear on every path."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrag.generation.decoding import generate
from longrag.generation.packed import SINGLE_ROW_MIN_BYTES, PackedLinear, pack_linears, packing_available, unpack_linears
from longrag.generation.precision import HalfWeightLinear, half_weight_twin
from longrag.generation.prompts import answer_messages, encode_chat

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")

BIG_IN = 1024
BIG_OUT = SINGLE_ROW_MIN_BYTES // 4 // BIG_IN  # a weight just large enough for the one-row packed path


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir):
    return (AutoTokenizer.from_pretrained(tiny_decoder_dir),
            AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval())


@pytest.mark.parametrize("shape", [(64, 48), (BIG_IN, BIG_OUT)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 11, 300])
def test_packed_linear_equals_the_plain_layer(shape, bias, rows):
    torch.manual_seed(rows)
    lin = nn.Linear(*shape, bias=bias)
    packed = PackedLinear(lin)
    x = torch.randn(1, rows, shape[0])
    with torch.inference_mode():
        assert torch.allclose(packed(x), lin(x), atol=1e-4, rtol=1e-4)
    assert packed.weight is lin.weight and packed.bias is lin.bias
    assert (packed.in_features, packed.out_features) == shape
    assert packed.single_row == (shape == (BIG_IN, BIG_OUT))


def test_gradients_flow_through_the_plain_weight():
    lin = nn.Linear(16, 8)
    packed = PackedLinear(lin)
    x = torch.randn(3, 16, requires_grad=True)
    packed(x).sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    nn.functional.linear(ref_x, lin.weight.detach(), lin.bias.detach()).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad)
    assert lin.weight.grad is not None  # the source layer was used, so its weight learns


def test_a_changed_weight_is_repacked():
    lin = nn.Linear(32, 32, bias=False)
    packed = PackedLinear(lin)
    x = torch.randn(4, 32)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # in place: same storage, new version
        assert torch.allclose(packed(x), lin(x), atol=1e-4)
        lin.weight = nn.Parameter(torch.randn(32, 32))  # replaced: new storage
        assert torch.allclose(packed(x), lin(x), atol=1e-4)


def test_copies_and_pickles_rebuild_the_packed_weight():
    lin = nn.Linear(32, 24)
    packed = PackedLinear(lin)
    x = torch.randn(5, 32)
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert clone._packed is None  # oneDNN's opaque tensor is not copied ...
        with torch.no_grad():
            assert torch.allclose(clone(x), lin(x), atol=1e-4)  # ... but rebuilt on first use
        assert clone.full.weight is not lin.weight


def test_pack_and_unpack_a_decoder_in_place_keep_its_greedy_answer(tiny):
    tok, model = tiny
    model = copy.deepcopy(model)
    ids = encode_chat(tok, answer_messages("What is the capital of France?",
                                           "Paris is the capital of France. " * 8))
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    with torch.inference_mode():
        before = model(input_ids=torch.tensor([ids])).logits
        plain = generate(model, tok, ids, max_new_tokens=12)
    assert pack_linears(model) == n_linear > 0
    assert pack_linears(model) == 0  # already packed
    assert not any(type(m) is nn.Linear and not isinstance(p, PackedLinear)
                   for p in model.modules() for m in p.children())
    with torch.inference_mode():
        after = model(input_ids=torch.tensor([ids])).logits
        assert generate(model, tok, ids, max_new_tokens=12).token_ids == plain.token_ids
    assert torch.allclose(after, before, atol=1e-4)
    assert unpack_linears(model) == n_linear
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_half_weight_twin_of_a_packed_model_shares_the_packed_layers(tiny):
    _, model = tiny
    model = copy.deepcopy(model)
    pack_linears(model)
    twin = half_weight_twin(model, "fp16")
    halves = [m for m in twin.modules() if isinstance(m, HalfWeightLinear)]
    source = {id(m) for m in model.modules() if isinstance(m, PackedLinear)}
    assert len(halves) == len(source) > 0
    assert {id(h.full) for h in halves} == source  # long blocks reuse the source's packed weights
    x = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        assert torch.equal(twin(input_ids=x).logits, model(input_ids=x).logits)  # a prefill block


def test_registry_packs_cpu_decoders_unless_turned_off(tiny_decoder_dir, monkeypatch):
    from longrag.config import get_settings
    from longrag.models import registry

    monkeypatch.setattr(registry, "_decoders", {})
    dec = registry.load_decoder(str(tiny_decoder_dir), device="cpu")
    assert dec.extra["packed_linears"] == sum(isinstance(m, PackedLinear) for m in dec.model.modules()) > 0
    monkeypatch.setattr(registry, "_decoders", {})
    monkeypatch.setenv("LONGRAG_PACKED_WEIGHTS", "false")
    get_settings.cache_clear()
    plain = registry.load_decoder(str(tiny_decoder_dir), device="cpu")
    assert plain.extra["packed_linears"] == 0
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())


def test_cfic_adapter_merges_into_a_packed_decoder(tiny, tiny_decoder_dir, tmp_path):
    """PEFT rewrites plain nn.Linear layers: the adapter path unpacks a copy, merges, packs again."""
    from peft import LoraConfig, get_peft_model

    from longrag.models.registry import Decoder
    from longrag.retrieval.cfic import load_adapter_extractor

    tok, model = tiny
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    merged_ref = lora.merge_and_unload().eval()
    packed_model = copy.deepcopy(model)
    pack_linears(packed_model)
    dec = Decoder("tiny", packed_model, tok, 4096, "cpu")
    ex = load_adapter_extractor(dec, str(tmp_path / "adapter"))
    assert any(isinstance(m, PackedLinear) for m in ex.model.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed_model.modules()) > 0  # the source stays packed
    x = torch.randint(0, 300, (1, 7))
    with torch.inference_mode():
        assert torch.allclose(ex.model(input_ids=x).logits, merged_ref(input_ids=x).logits, atol=1e-4)
        assert not torch.allclose(ex.model(input_ids=x).logits, model(input_ids=x).logits, atol=1e-4)
