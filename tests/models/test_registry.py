"""Model registry: SHA-256 verification, package lookup without import, caches."""

from __future__ import annotations

import dataclasses

import pytest

from longrag.errors import ModelIntegrityError
from longrag.models import registry


def test_bundled_models_are_declared_with_licences():
    assert set(registry.BUNDLED) == {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "all-minilm-l6-v2"}
    for spec in registry.BUNDLED.values():
        assert len(spec.sha256) == 64 and spec.license == "Apache-2.0"


def test_embedder_bytes_verify():
    paths = registry.verify(registry.BUNDLED["all-minilm-l6-v2"])
    assert paths[0].name == "model.safetensors"


def test_sha_mismatch_is_a_clear_error():
    bad = dataclasses.replace(registry.BUNDLED["all-minilm-l6-v2"], sha256="0" * 64)
    with pytest.raises(ModelIntegrityError, match="SHA-256 mismatch"):
        registry.verify(bad)


def test_missing_package_is_a_clear_error():
    with pytest.raises(ModelIntegrityError, match="not installed"):
        registry.package_dir("no_such_model_package_xyz")


def test_local_path_decoder_loads_once(tiny_decoder_dir):
    a = registry.load_decoder(str(tiny_decoder_dir), device="cpu")
    b = registry.load_decoder(str(tiny_decoder_dir), device="cpu")
    assert a is b and a.context_window == 4096
    assert any(str(tiny_decoder_dir) in name for name in registry.loaded_models())


@pytest.mark.integration
def test_half_weight_drafter_twin_is_built_once_and_shares_the_tokenizer(tiny_decoder_dir):
    base = registry.load_decoder(str(tiny_decoder_dir), device="cpu")
    assert registry.load_decoder(str(tiny_decoder_dir), device="cpu", weights="fp32") is base
    twin = registry.load_decoder(str(tiny_decoder_dir), device="cpu", weights="fp16")
    assert twin is registry.load_decoder(str(tiny_decoder_dir), device="cpu", weights="fp16")
    assert twin.model is not base.model and twin.tokenizer is base.tokenizer
    assert twin.extra["weights"] == "fp16"
    with pytest.raises(ValueError, match="weights"):
        registry.load_decoder(str(tiny_decoder_dir), device="cpu", weights="int3")


def test_bundled_decoders_load_from_cache_quickly():
    import time

    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        location, spec = registry.resolve(name)  # builds the cache on first use
        t0 = time.perf_counter()
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(location)
        assert spec is not None
        assert time.perf_counter() - t0 < 30  # generous: the benchmark reports the real figure
