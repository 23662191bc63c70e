"""REFRAG: chunking, decoder input layout, checkpoints, cached generation, the cached artifact in the mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from longrag.generation import refrag as rf
from longrag.generation.decoding import stop_token_ids


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_decoder_dir)


def _projector(dec_dim: int = 64, enc_dim: int = 384, seed: int = 0) -> rf.Projector:
    torch.manual_seed(seed)
    return rf.new_projector(rf.RefragConfig("d", "e", 8, enc_dim=enc_dim, dec_dim=dec_dim, hidden_dim=dec_dim)).eval()


# -- chunking ------------------------------------------------------------------------------------
def test_chunking_keeps_last_partial_chunk():
    ids = list(range(37))
    chunks = rf.chunk_ids(ids, 16)
    assert [len(c) for c in chunks] == [16, 16, 5]
    assert sum(chunks, []) == ids


def test_context_shorter_than_k_is_one_chunk_and_empty_is_none():
    assert rf.chunk_ids([5, 6, 7], 16) == [[5, 6, 7]]
    assert rf.chunk_ids([], 8) == []
    with pytest.raises(ValueError):
        rf.chunk_ids([1, 2], 0)


# -- decoder input -------------------------------------------------------------------------------
def test_inputs_embeds_layout_with_partial_chunk_and_expansion(tiny):
    model, _ = tiny
    proj = _projector()
    chunks = rf.chunk_ids(list(range(10, 47)), 16)  # 16, 16, 5
    emb = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    prefix, suffix = [1, 2, 3], [4, 5]
    with torch.no_grad():
        x, layout = rf.build_inputs_embeds(model, proj, chunks, emb, expand={1}, prefix_ids=prefix, suffix_ids=suffix)
        wte = model.get_input_embeddings()
        assert x.shape == (1, 3 + 1 + 16 + 1 + 2, 64)
        assert layout.n_chunks == 3 and layout.n_expanded == 1 and layout.n_compressed == 2
        assert layout.context_tokens == 37 and layout.input_length == x.shape[1]
        phi = proj(torch.from_numpy(emb))
        torch.testing.assert_close(x[0, 3], phi[0])  # chunk 0 compressed, in document order
        torch.testing.assert_close(x[0, 4:20], wte(torch.tensor(chunks[1])))  # chunk 1 expanded to raw tokens
        torch.testing.assert_close(x[0, 20], phi[2])  # the partial last chunk is one slot too
        torch.testing.assert_close(x[0, -2:], wte(torch.tensor(suffix)))



def test_token_bag_projector_reads_each_chunks_own_tokens(tiny, tmp_path: Path):
    """With bag_views > 0 a slot also depends on the chunk's tokens (right-aligned), still one slot per chunk."""
    model, _ = tiny
    torch.manual_seed(0)
    cfg = rf.RefragConfig("d", "e", 8, enc_dim=384, dec_dim=64, hidden_dim=64, bag_views=3)
    proj = rf.new_projector(cfg).eval()
    wte = model.get_input_embeddings()
    chunks = [list(range(10, 18)), [30, 31, 32]]  # a full chunk and a short last one
    emb = np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32)
    with torch.no_grad():
        tok = rf.chunk_token_embeds(wte, chunks, 8)
        assert tok.shape == (2, 8, 64)
        assert float(tok[1, :5].abs().sum()) == 0.0  # padding before the short chunk
        torch.testing.assert_close(tok[1, 5:], wte(torch.tensor([30, 31, 32])))
        # view 0 starts as the mean, view j as the j-th token from the end
        bag = proj.bag(tok[:1]).view(3, 64)
        torch.testing.assert_close(bag[0], wte(torch.tensor(chunks[0])).mean(0))
        torch.testing.assert_close(bag[1], wte(torch.tensor([17]))[0])
        x, layout = rf.build_inputs_embeds(model, proj, chunks, emb, prefix_ids=[1], suffix_ids=[2])
        assert x.shape[1] == 1 + 2 + 1 and layout.n_compressed == 2
        torch.testing.assert_close(x[0, 1:3], proj(torch.from_numpy(emb), tok))
        other, _ = rf.build_inputs_embeds(model, proj, [list(range(20, 28)), [30, 31, 32]], emb, prefix_ids=[1], suffix_ids=[2])
        assert not torch.allclose(other[0, 1], x[0, 1]) and torch.allclose(other[0, 2], x[0, 2])
        with pytest.raises(ValueError, match="token embeddings"):
            proj(torch.from_numpy(emb))
    path = rf.save_checkpoint(tmp_path / "refrag-bag.pt", proj, cfg)
    loaded, cfg2, _ = rf.load_checkpoint(path)
    assert cfg2.bag_views == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(emb), tok), proj(torch.from_numpy(emb), tok), rtol=1e-2, atol=1e-3)

def test_empty_context_gives_prompt_only(tiny):
    model, tok = tiny
    x, layout = rf.build_inputs_embeds(model, _projector(), [], np.zeros((0, 384), np.float32), prefix_ids=[1, 2], suffix_ids=[3])
    assert x.shape[1] == 3 and layout.n_chunks == 0 and layout.context_tokens == 0
    res = rf.generate_from_embeds(model, tok, x.detach(), max_new_tokens=3)
    assert res.prompt_tokens == 3
    with pytest.raises(ValueError):
        rf.build_inputs_embeds(model, _projector(), [], np.zeros((0, 384), np.float32))


def test_mismatched_chunks_and_embeddings_rejected(tiny):
    model, _ = tiny
    with pytest.raises(ValueError):
        rf.build_inputs_embeds(model, _projector(), [[1, 2]], np.zeros((2, 384), np.float32))


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_roundtrip_and_mismatch_names_both_models(tmp_path: Path):
    cfg = rf.RefragConfig("smollm2-135m-instruct", "all-minilm-l6-v2", 16)
    proj = rf.new_projector(cfg)
    path = rf.save_checkpoint(tmp_path / "refrag-x.pt", proj, cfg, {"note": "t"})
    loaded, cfg2, meta = rf.load_checkpoint(path, decoder="smollm2-135m-instruct", embedder="all-minilm-l6-v2", k=16)
    assert cfg2 == cfg and meta == {"note": "t"}
    for a, b in zip(proj.parameters(), loaded.parameters()):  # stored in fp16
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    with pytest.raises(rf.RefragCheckpointError) as e:
        rf.load_checkpoint(path, decoder="qwen2.5-coder-0.5b-instruct")
    assert "smollm2-135m-instruct" in str(e.value) and "qwen2.5-coder-0.5b-instruct" in str(e.value)
    with pytest.raises(rf.RefragCheckpointError) as e:
        rf.load_checkpoint(path, embedder="bge-small")
    assert "all-minilm-l6-v2" in str(e.value) and "bge-small" in str(e.value)
    with pytest.raises(rf.RefragCheckpointError, match="k=16"):
        rf.load_checkpoint(path, k=8)
    with pytest.raises(rf.RefragCheckpointError, match="no REFRAG"):
        rf.load_checkpoint(tmp_path / "missing.pt")


def test_bundled_projector_fits_smollm2_and_qwen_falls_back_with_a_note():
    from longrag.config import Settings
    from longrag.services.modes.refrag import resolve_checkpoint

    path = rf.find_checkpoint("smollm2-135m-instruct", 16)
    if path is None:
        pytest.skip("no bundled k=16 projector")
    cfg = rf.checkpoint_config(path)
    assert (cfg.enc_dim, cfg.hidden_dim, cfg.dec_dim) == (384, 576, 576) and cfg.embedder == "all-minilm-l6-v2"
    res = resolve_checkpoint(Settings(decoder="qwen2.5-coder-0.5b-instruct"), 16)
    assert res.decoder == "smollm2-135m-instruct" and "qwen2.5-coder-0.5b-instruct" in res.note
    assert resolve_checkpoint(Settings(decoder="smollm2-135m-instruct"), 16).note is None


def test_missing_projector_is_a_clear_error(tmp_path: Path):
    from longrag.config import Settings
    from longrag.errors import InvalidRequestError
    from longrag.services.modes.refrag import resolve_checkpoint

    with pytest.raises(rf.RefragCheckpointError, match="no REFRAG projector checkpoint"):
        resolve_checkpoint(Settings(refrag_weights=tmp_path / "nope.pt"), 16)
    with pytest.raises(InvalidRequestError, match="k=12"):
        resolve_checkpoint(Settings(), 12)


# -- generation through inputs_embeds with a KV cache ----------------------------------------------
def test_cached_generation_equals_stepwise_recomputation(tiny):
    model, tok = tiny
    proj = _projector(seed=1)
    chunks = rf.chunk_ids(list(range(20, 61)), 8)
    emb = np.random.default_rng(1).standard_normal((len(chunks), 384)).astype(np.float32)
    with torch.no_grad():
        x, _ = rf.build_inputs_embeds(model, proj, chunks, emb, expand={2}, prefix_ids=[7, 8], suffix_ids=[9])
    n = 10
    res = rf.generate_from_embeds(model, tok, x, max_new_tokens=n)
    # recompute from scratch at every step: no cache, whole sequence each time
    wte = model.get_input_embeddings()
    out: list[int] = []
    stops = stop_token_ids(tok)
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([x[0], wte(torch.tensor(out, dtype=torch.long))], 0)[None] if out else x
            tid = int(model(inputs_embeds=seq).logits[0, -1].argmax())
            if tid in stops:
                break
            out.append(tid)
    assert res.token_ids == out
    assert len(out) >= 1


def test_prefill_in_slices_matches_one_pass(tiny):
    from transformers import DynamicCache

    model, _ = tiny
    x = torch.randn(1, 23, 64)
    with torch.no_grad():
        whole = model(inputs_embeds=x).logits[:, -1]
        sliced = rf.prefill_embeds(model, x, DynamicCache(), chunk=5)
    torch.testing.assert_close(whole, sliced, atol=1e-4, rtol=1e-4)


# -- selective expansion -------------------------------------------------------------------------
def test_query_policy_expands_most_similar_chunks():
    emb = np.eye(10, 4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]
    q = np.array([0, 0, 1, 0], np.float32)
    assert rf.expand_by_query(emb, q, 0.2) == {2, 6}
    assert rf.expand_by_query(emb, q, 0.0) == set()
    assert len(rf.expand_by_query(emb, q, 1.0)) == 10
    with pytest.raises(ValueError):
        rf.expand_by_query(emb, q, 1.5)


def test_perplexity_policy_picks_hardest_chunks(tiny):
    model, _ = tiny
    chunks = [[5] * 8, list(range(100, 108)), [5] * 8, [9, 300, 17, 250, 3, 199, 77, 41]]
    nll = rf.chunk_log_ppl(model, chunks)
    assert nll.shape == (4,)
    picked = rf.expand_by_perplexity(model, chunks, 0.5)
    assert picked == set(np.argsort(-nll)[:2].tolist())


def test_artifact_roundtrip():
    art = rf.ChunkArtifact(8, "dec", "emb", np.arange(19, dtype=np.int32), np.array([0, 30, 60]),
                           np.array([29, 59, 70]), np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32))
    back = rf.unpack_artifact(rf.pack_artifact(art))
    assert (back.k, back.decoder, back.embedder) == (8, "dec", "emb")
    assert back.chunks() == rf.chunk_ids(range(19), 8)
    np.testing.assert_allclose(back.embeddings, art.embeddings, atol=2e-3)


# -- the mode reads the artifact computed at ingestion -------------------------------------------
@pytest.mark.integration
def test_refrag_mode_uses_artifact_cached_at_ingestion(tiny_decoder_dir: Path, tmp_path: Path, monkeypatch):
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus
    from longrag.services.modes import refrag as mode
    from longrag.services.qa import QAPipeline, Question

    cfg = rf.RefragConfig(str(tiny_decoder_dir), "all-minilm-l6-v2", 8, enc_dim=384, dec_dim=64, hidden_dim=64)
    torch.manual_seed(0)
    ckpt = rf.save_checkpoint(tmp_path / "refrag-tiny-k8.pt", rf.new_projector(cfg), cfg)
    monkeypatch.setenv("LONGRAG_DECODER", str(tiny_decoder_dir))
    monkeypatch.setenv("LONGRAG_REFRAG_WEIGHTS", str(ckpt))
    monkeypatch.setenv("LONGRAG_REFRAG_K", "8")
    monkeypatch.setenv("LONGRAG_REFRAG_P", "0.25")
    get_settings.cache_clear()
    corpus = Corpus(settings=get_settings())
    mode.install(corpus)
    mode.install(corpus)
    assert corpus.ingest_hooks.count(mode.ingest_hook) == 1
    text = "Paris is the capital of France. " * 6 + "The quick brown fox jumps over the lazy dog. " * 5
    doc = corpus.ingest_bytes(text.encode(), "a.txt").doc_id
    art = rf.unpack_artifact(corpus.store.get_artifact(doc, "refrag-k8"))
    assert art.k == 8 and art.n_chunks == len(rf.chunk_ids(art.token_ids, 8)) and art.embeddings.shape[1] == 384

    # the question must not re-embed the chunks: the encoder is disabled after ingestion
    def refuse(self, chunks):
        raise AssertionError("chunk embeddings recomputed at question time")

    original = rf.ChunkEncoder.encode
    monkeypatch.setattr(rf.ChunkEncoder, "encode", refuse)
    pipe = QAPipeline(corpus)
    ans = pipe.ask(Question("What is the capital of France?", mode="refrag", max_new_tokens=4))
    st = ans.stats
    assert ans.mode == "refrag" and st["chunk_cache"] == "hit" and st["k"] == 8
    assert st["chunks_total"] == art.n_chunks
    assert st["chunks_expanded"] == rf.n_expanded(art.n_chunks, 0.25) > 0
    assert st["chunks_compressed"] + st["chunks_expanded"] == st["chunks_total"]
    assert st["decoder_input_length"] == st["prompt_tokens"] < st["context_tokens"] + 400  # instruction, worked example, question
    assert ans.evidence and ans.evidence[0].doc_id == doc

    # a document ingested without the hook gets its artifact on its first question, then reuses it
    monkeypatch.setattr(rf.ChunkEncoder, "encode", original)
    corpus.ingest_hooks.clear()
    doc2 = corpus.ingest_bytes(b"Another short text about dogs. It is short.", "b.txt").doc_id
    assert corpus.store.get_artifact(doc2, "refrag-k8") is None
    q = Question("dogs?", mode="refrag", doc_ids=[doc2], max_new_tokens=2)
    assert pipe.ask(q).stats["chunk_cache"] == "computed"
    assert pipe.ask(q).stats["chunk_cache"] == "hit"
    assert mode.ingest_hook in corpus.ingest_hooks  # the mode re-registered its hook on use
