"""The embedding backends: ONNX (fp32 / int8) vectors match plain ``SentenceTransformer.encode``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longrag.retrieval.embed import ONNX_FILES, Embedder, OnnxSentenceEncoder, onnx_cache_valid, prepare_onnx

SENTENCES = [
    "Super Bowl 50 was an American football game to determine the champion of the NFL.",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Oxygen is a chemical element with symbol O and atomic number 8.",
    "short",
    "A much longer sentence about the history of computing, " * 40,  # > 256 word-pieces: truncated
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random BERT sentence-transformer (mean pooling + normalise), built in the test."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-st") / "bert"
    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += ["the", "of", "and", "was", "in", "to", "##s", "##e", "##d", "##n", ".", ","]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    word = models.Transformer(str(folder), max_seq_length=64)
    st = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    return st


@pytest.fixture(scope="module")
def tiny_onnx(tiny_st, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_onnx(tiny_st, tmp_path_factory.mktemp("onnx") / "tiny", source_id="tiny-v1")


def test_tiny_export_matches_torch(tiny_st, tiny_onnx: Path):
    cache = tiny_onnx
    assert all((cache / f).exists() for f in ONNX_FILES.values())
    mtime = (cache / ONNX_FILES["onnx"]).stat().st_mtime
    assert prepare_onnx(tiny_st, cache, source_id="tiny-v1") == cache  # cached: no re-export
    assert (cache / ONNX_FILES["onnx"]).stat().st_mtime == mtime
    ref = tiny_st.encode(SENTENCES, normalize_embeddings=True)
    fast = OnnxSentenceEncoder(tiny_st, cache / ONNX_FILES["onnx"], threads=1)
    got = fast.encode(SENTENCES, batch_size=2, normalize_embeddings=True)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # order is kept although batches are length-sorted; a single string gives one vector
    np.testing.assert_allclose(fast.encode(SENTENCES[2]), ref[2], atol=1e-4)
    int8 = OnnxSentenceEncoder(tiny_st, cache / ONNX_FILES["onnx-int8"], threads=1)
    assert _cos(int8.encode(SENTENCES), ref).min() > 0.95
    # attributes it does not define come from the wrapped model
    assert fast.get_embedding_dimension() == 32 and fast.max_seq_length == 64
    # a text longer than the model's limit is truncated exactly as sentence-transformers does,
    # and batching it with short texts (padding) changes nothing
    mixed = [" ".join(SENTENCES * 6), "short", *SENTENCES]
    np.testing.assert_allclose(fast.encode(mixed, batch_size=3, normalize_embeddings=True),
                               tiny_st.encode(mixed, normalize_embeddings=True), atol=1e-4)


def test_export_fuses_attention(tiny_st, tiny_onnx: Path):
    """The speed of the ONNX path comes from onnxruntime's fused attention: the export must
    leave a graph the optimiser recognises, and the torch model keeps its own attention."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(tiny_onnx / ONNX_FILES["onnx"])).graph.node}
    assert "Attention" in ops and "Softmax" not in ops, ops
    assert tiny_st[0].auto_model.config._attn_implementation == "sdpa"  # restored after the trace


def test_cache_validity(tiny_onnx: Path, tmp_path: Path):
    import shutil

    assert onnx_cache_valid(tiny_onnx, "tiny-v1")
    assert not onnx_cache_valid(tiny_onnx, "other-weights")  # other source: re-export
    copy = tmp_path / "copy"
    shutil.copytree(tiny_onnx, copy)
    (copy / ONNX_FILES["onnx-int8"]).unlink()
    assert not onnx_cache_valid(copy, "tiny-v1")  # a broken cache is rebuilt
    assert not onnx_cache_valid(tmp_path / "missing", "tiny-v1")


def test_embedder_on_onnx_handles_empty_input(tiny_st, tiny_onnx: Path):
    emb = Embedder(OnnxSentenceEncoder(tiny_st, tiny_onnx / ONNX_FILES["onnx"], threads=1))
    assert emb.encode([]).shape == (0, 32)
    vecs = emb.encode(["", "a b c"])
    assert vecs.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert emb.count_tokens([]) == []


@pytest.mark.integration
@pytest.mark.parametrize("backend,min_cos", [("onnx", 0.9999), ("onnx-int8", 0.97)])
def test_bundled_minilm_backends_match_plain_encode(backend: str, min_cos: float):
    from longrag.models.registry import load_embedder

    plain = load_embedder(backend="torch", device="cpu")
    fast = load_embedder(backend=backend, device="cpu")
    assert isinstance(fast, OnnxSentenceEncoder)
    assert load_embedder(backend=backend, device="cpu") is fast  # cached per process
    ref = plain.encode(SENTENCES, normalize_embeddings=True)
    got = fast.encode(SENTENCES, normalize_embeddings=True)
    cos = _cos(got, ref)
    assert cos.min() > min_cos, cos
    # retrieval order is kept: each sentence is still its own nearest neighbour
    assert (np.argmax(got @ ref.T, axis=1) == np.arange(len(SENTENCES))).all()
    emb = Embedder(fast)
    assert emb.encode([]).shape == (0, 384)
    assert emb.count_tokens(["Oxygen is an element."]) == Embedder(plain).count_tokens(["Oxygen is an element."])


@pytest.mark.integration
def test_backend_setting_chooses_the_embedder(monkeypatch: pytest.MonkeyPatch):
    from longrag.config import get_settings
    from longrag.models.registry import embed_backend_for, load_embedder

    monkeypatch.setenv("LONGRAG_EMBED_BACKEND", "onnx")
    get_settings.cache_clear()
    assert isinstance(load_embedder(device="cpu"), OnnxSentenceEncoder)
    monkeypatch.setenv("LONGRAG_EMBED_BACKEND", "torch")
    get_settings.cache_clear()
    assert not isinstance(load_embedder(device="cpu"), OnnxSentenceEncoder)
    assert embed_backend_for("cuda", "auto") == "torch"
    with pytest.raises(ValueError):
        embed_backend_for("cpu", "tensorrt")
