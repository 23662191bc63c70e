"""Fixtures shared by the RAPID tests (tests/generation/test_rapid.py, tests/bench/test_rapid_variants.py):
tiny random decoders, the shared context and the prompt they answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrag.generation.prompts import answer_messages, encode_chat
from longrag.models.tiny import build_tiny_decoder

CONTEXT = (
    "The quick brown fox jumps over the lazy dog. She spent eleven years there. "
    "Paris is the capital of France. The answer is unknown. "
) * 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not spin-wait on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir):
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    return tok, AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).eval()


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> Path:
    """Same tokenizer (deterministic BPE on the same text), different random weights."""
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny2") / "tiny-llama-seed1", seed=1)


@pytest.fixture(scope="module")
def other(other_dir):
    """A drafter that often disagrees: untied, re-randomised output head (random tiny models with
    tied embeddings tend to repeat one token, which would make every draft agree)."""
    model = AutoModelForCausalLM.from_pretrained(other_dir).eval()
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(model.lm_head.weight.shape, generator=gen) * model.lm_head.weight.std()
    model.lm_head.weight = torch.nn.Parameter(w)
    return model


def prompt(tok, context: str = CONTEXT, question: str = "What is the capital of France?") -> list[int]:
    return encode_chat(tok, answer_messages(question, context))
