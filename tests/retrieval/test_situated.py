"""Situated embeddings: strategies, context windows, adapter files, bad input, and the product's
``situated`` / ``hybrid`` retrievers (real all-MiniLM-L6-v2)."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest

from longrag.retrieval.embed import Embedder
from longrag.retrieval.segment import split_sentences
from longrag.retrieval.situated import (
    DEFAULT_WEIGHTS,
    Adapter,
    SituatedConfig,
    SituatedEmbedder,
    UnitDoc,
    neighbours,
    paragraph_ids,
)


@lru_cache(maxsize=1)
def _embedder() -> Embedder:
    from longrag.models.registry import load_embedder

    return Embedder(load_embedder("all-minilm-l6-v2"))


def doc_of(text: str, title: str | None = None) -> UnitDoc:
    return UnitDoc(text, [(s.start, s.end) for s in split_sentences(text)], title)


STRATEGIES = {
    "residual_pool": SituatedConfig(strategy="residual", context="pool"),
    "residual_encode": SituatedConfig(strategy="residual", context="encode"),
    "late": SituatedConfig(strategy="late"),
}
if DEFAULT_WEIGHTS.exists():
    STRATEGIES["trained"] = SituatedConfig(strategy="trained")

# A unit that only its context makes findable: "She" is Ada Lovelace, stated two sentences back.
PRONOUN_DOC = (
    "Ada Lovelace was an English mathematician and writer. "
    "She was the daughter of the poet Lord Byron. "
    "She wrote the first published algorithm for a computing machine. "
    "Her notes describe how the engine could go beyond calculation."
)
DISTRACTORS = [
    "The first published cookbook for a home kitchen appeared in London. "
    "It collected recipes from several cooks.",
    "Charles Babbage designed the Analytical Engine. "
    "The engine was never completed during his lifetime.",
    "A machine for weaving patterns used punched cards. "
    "Weavers in Lyon adopted it quickly.",
]
QUERY = "Which algorithm did Ada Lovelace write?"
TARGET = "She wrote the first published algorithm for a computing machine."


# -- pure mechanics (no model) ------------------------------------------------------------------
def test_neighbours_respect_window_paragraph_and_lead():
    text = "A one. A two. A three.\n\nB one. B two."
    units = [(s.start, s.end) for s in split_sentences(text)]
    assert paragraph_ids(text, units) == [0, 0, 0, 1, 1]
    ctx = neighbours(text, units, SituatedConfig(window=1, lead=1))
    assert ctx[0] == [1]  # the lead is the unit itself: not repeated
    assert ctx[2] == [0, 1]  # lead, then the window (inside the paragraph)
    assert ctx[3] == [0, 4]  # the window never crosses the blank line; the lead does
    no_para = neighbours(text, units, SituatedConfig(window=1, lead=0, paragraph=False))
    assert no_para[3] == [2, 4]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        SituatedConfig(strategy="concat")
    with pytest.raises(ValueError):
        SituatedConfig(context="both")
    with pytest.raises(ValueError):
        SituatedConfig(window=-1)
    with pytest.raises(ValueError):
        SituatedConfig(late_max_tokens=64, late_overlap=40)


def test_adapter_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    mats = {"pool": rng.normal(size=(8, 8)).astype(np.float32), "lead": np.eye(8, dtype=np.float32)}
    Adapter(["pool", "lead"], mats, {"window": 2}).save(tmp_path / "a.npz")
    back = Adapter.load(tmp_path / "a.npz")
    assert back.features == ["pool", "lead"] and back.meta["window"] == 2
    np.testing.assert_allclose(back.matrices["pool"], mats["pool"], atol=1e-2)  # stored as float16
    c = rng.normal(size=(5, 8)).astype(np.float32)
    out = back.apply(c, {"pool": c, "lead": c})
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_missing_adapter_weights_say_how_to_train(tmp_path):
    emb = SituatedEmbedder(object(), SituatedConfig(strategy="trained", weights=str(tmp_path / "none.npz")))  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="train_situated"):
        _ = emb.adapter


# -- strategies with the real embedder --------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_shapes_and_normalisation(name: str):
    emb = SituatedEmbedder(_embedder(), STRATEGIES[name])
    docs = [doc_of(PRONOUN_DOC, "Ada Lovelace"), doc_of(DISTRACTORS[0])]
    out = emb.embed_many(docs)
    for d, v in zip(docs, out):
        n = len(d.units)
        assert v.chunk.shape == v.situated.shape == (n, 384)
        assert v.chunk.dtype == v.situated.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v.chunk, axis=1), 1.0, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(v.situated, axis=1), 1.0, atol=1e-4)
        comb = v.combined()
        q = _embedder().encode([QUERY])[0]
        np.testing.assert_allclose(comb @ q, (v.situated @ q + v.beta * (v.chunk @ q)) / (1 + v.beta), atol=1e-5)
    # situating changes the vectors of units that have context
    assert not np.allclose(out[0].situated, out[0].chunk)


@pytest.mark.integration
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_situating_finds_the_pronoun_sentence(name: str):
    """Chunk-only, "She wrote ..." does not name Ada Lovelace; situated, it should win."""
    emb = SituatedEmbedder(_embedder(), STRATEGIES[name])
    docs = [doc_of(PRONOUN_DOC), *(doc_of(t) for t in DISTRACTORS)]
    out = emb.embed_many(docs)
    texts = [d.text[a:b] for d in docs for a, b in d.units]
    target = texts.index(TARGET)
    q = _embedder().encode([QUERY])[0]
    chunk_scores = np.concatenate([v.chunk for v in out]) @ q
    sit_scores = np.concatenate([v.combined() for v in out]) @ q
    assert sit_scores[target] > chunk_scores[target]  # the context (Ada Lovelace) raised it
    # it rises in the ranking (only the lead sentence, which names her, may stay above it) ...
    rank = lambda scores: int((scores > scores[target]).sum())  # noqa: E731
    assert rank(sit_scores) <= min(rank(chunk_scores), 1)
    # ... and its margin over the other documents' units grows
    others = np.arange(len(docs[0].units), len(texts))
    assert sit_scores[target] > sit_scores[others].max()
    assert sit_scores[target] - sit_scores[others].max() > chunk_scores[target] - chunk_scores[others].max()


@pytest.mark.integration
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_bad_input_empty_single_long_and_other_scripts(name: str):
    emb = SituatedEmbedder(_embedder(), replace(STRATEGIES[name], late_max_tokens=128, late_overlap=16))
    long_sentence = " ".join(f"word{i} alpha beta gamma" for i in range(300))  # ~1,500 word pieces
    docs = [
        UnitDoc("", []),
        doc_of("Only one sentence here."),
        doc_of(long_sentence + ". A short one follows."),
        doc_of("北京是中国的首都。它有三千多年的历史。长城在北京附近。"),
        doc_of("القاهرة هي عاصمة مصر. تقع على نهر النيل. يعيش فيها ملايين الناس."),
        UnitDoc("Title only", [(0, 10)], title="T"),
    ]
    out = emb.embed_many(docs)
    assert out[0].chunk.shape == out[0].situated.shape == (0, 384)
    assert out[0].combined().shape == (0, 384)
    for d, v in zip(docs[1:], out[1:]):
        assert v.situated.shape == (len(d.units), 384)
        assert np.isfinite(v.situated).all()
        np.testing.assert_allclose(np.linalg.norm(v.situated, axis=1), 1.0, atol=1e-4)
    # a one-unit document without title has no context: situated == chunk-only (late chunking
    # pools the span's tokens without [CLS]/[SEP], so there it is only nearly the same)
    if STRATEGIES[name].strategy == "late":
        assert float(out[1].situated[0] @ out[1].chunk[0]) > 0.9
    else:
        np.testing.assert_allclose(out[1].situated, out[1].chunk, atol=1e-5)
    # the long sentence spans several late-chunking windows and still gets one sensible vector
    q = _embedder().encode(["word150 alpha beta gamma"])[0]
    assert float(out[2].situated[0] @ q) > 0.3
    # scripts other than Latin: each situated vector stays about its own unit; with the residual
    # strategies it is closest to its own chunk-only vector (late chunking mixes MiniLM's weak
    # CJK / Arabic token states more, so only closeness is asserted there)
    for v in out[3:5]:
        sims = v.situated @ v.chunk.T
        assert (np.diag(sims) > 0.5).all()
        if STRATEGIES[name].strategy != "late":
            assert (np.argmax(sims, axis=1) == np.arange(len(sims))).all()


@pytest.mark.integration
def test_late_chunking_uses_real_position_limit():
    """Windows longer than the model's 512 positions are capped, not an error."""
    cfg = SituatedConfig(strategy="late", late_max_tokens=4096, late_overlap=32)
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(120))
    doc = doc_of(text)
    v = SituatedEmbedder(_embedder(), cfg).embed(doc)
    assert v.situated.shape == (len(doc.units), 384) and np.isfinite(v.situated).all()


# -- product integration: Corpus.search(retriever=...) and Question.retriever ---------------------
@pytest.mark.integration
@pytest.mark.parametrize("retriever", ["chunk", "situated", "bm25", "hybrid"])
def test_corpus_search_with_each_retriever(retriever: str):
    from longrag.services.corpus import Corpus

    corpus = Corpus(settings=replace_settings(chunk_tokens=16))
    a = corpus.ingest_bytes(PRONOUN_DOC.encode(), "ada.txt")
    for i, t in enumerate(DISTRACTORS):
        corpus.ingest_bytes(t.encode(), f"d{i}.txt")
    assert corpus.store.count_vectors("situated") == corpus.store.count_vectors("chunk") > 0
    hits = corpus.search(QUERY, k=3, retriever=retriever)
    assert hits and len(hits) <= 3
    assert hits[0].doc_id == a.doc_id
    text = corpus.text(a.doc_id)
    assert all(h.text == corpus.text(h.doc_id)[h.start : h.end] for h in hits)
    only = corpus.search("Lyon weavers", k=5, doc_ids=[a.doc_id], retriever=retriever)
    assert all(h.doc_id == a.doc_id for h in only)
    assert text.startswith("Ada Lovelace")


def replace_settings(**kw):
    from longrag.config import get_settings

    return get_settings().model_copy(update=kw)


@pytest.mark.integration
def test_unknown_retriever_and_question_retriever_is_honoured():
    from longrag.errors import InvalidRequestError
    from longrag.services.corpus import Corpus
    from longrag.services.qa import QAPipeline, Question

    corpus = Corpus(settings=replace_settings(chunk_tokens=16))
    corpus.ingest_bytes(PRONOUN_DOC.encode(), "ada.txt")
    corpus.ingest_bytes(DISTRACTORS[2].encode(), "loom.txt")
    with pytest.raises(InvalidRequestError, match="retriever"):
        corpus.search(QUERY, retriever="magic")
    pipe = QAPipeline(corpus)
    # BM25 gives no hit for a query with no shared term; the dense retrievers always answer
    q = Question("zyxwv qwerty", retriever="bm25", k=2)
    assert pipe.retrieve(q)[0] == []
    q = Question("zyxwv qwerty", retriever="situated", k=2)
    assert len(pipe.retrieve(q)[0]) == 2
    with pytest.raises(InvalidRequestError):
        pipe.retrieve(Question(QUERY, retriever="magic"))


@pytest.mark.integration
def test_store_without_situated_vectors_falls_back_to_chunk():
    from longrag.services.corpus import Corpus, chunk_vectors

    settings = replace_settings(chunk_tokens=16)
    old = Corpus(settings=settings, vector_builders={"chunk": chunk_vectors})
    a = old.ingest_bytes(PRONOUN_DOC.encode(), "ada.txt")
    new = Corpus(settings=settings)
    assert new.store.count_vectors("situated") == 0
    hits = new.search(QUERY, k=2, retriever="situated")
    assert hits and hits[0].doc_id == a.doc_id


# -- headings: a chunk under a heading is read with its heading path ------------------------------
HEADED_MD = (
    "# Research staff\n\n"
    "## Ingrid Solberg\n\nIngrid Solberg studies glaciers at the institute. She joined in 2009. "
    "She grew up in a fishing village. Her team measures ice every spring.\n\n"
    "## Tomas Varga\n\nTomas Varga studies river deltas at the institute. He joined in 2014. "
    "He grew up in a mining town. His team samples mud every autumn.\n"
)


@pytest.mark.integration
def test_a_headed_unit_is_encoded_with_its_heading_path_and_others_keep_their_vectors():
    emb = SituatedEmbedder(_embedder())
    plain = doc_of("Ingrid Solberg studies glaciers. She joined in 2009. She grew up by the sea.")
    paths = ["", "Staff > Ingrid Solberg", "Staff > Ingrid Solberg"]
    headed = replace(plain, sections=paths)
    v_plain, v_headed = emb.embed(plain), emb.embed(headed)
    np.testing.assert_allclose(v_headed.combined()[0], v_plain.combined()[0], atol=1e-6)  # no heading: as before
    want = _embedder().encode(["Staff > Ingrid Solberg. She joined in 2009."])[0]
    np.testing.assert_allclose(v_headed.combined()[1], want, atol=1e-5)
    np.testing.assert_allclose(v_headed.chunk[1], want, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("retriever", ["situated", "bm25", "hybrid"])
def test_the_heading_finds_the_pronoun_chunk_of_its_section(retriever: str):
    """Chunks of about one sentence: "She joined in 2009." shares no word with Ingrid Solberg's name; its
    heading does, so the situated retrievers rank it above Tomas Varga's "He joined in 2014.";
    chunk-only vectors cannot tell the two apart by name."""
    from longrag.services.corpus import Corpus

    corpus = Corpus(settings=replace_settings(chunk_tokens=8))
    doc = corpus.ingest_bytes(HEADED_MD.encode(), "staff.md").doc_id
    text = corpus.text(doc)
    gold, other = text.index("She joined in 2009."), text.index("He joined in 2014.")

    def rank(r: str, at: int) -> int:
        hits = corpus.search("When did Ingrid Solberg join?", k=20, doc_ids=[doc], retriever=r)
        return next((i for i, h in enumerate(hits) if h.start <= at < h.end), len(hits))  # absent: last

    assert rank(retriever, gold) < rank(retriever, other)
    assert rank(retriever, gold) <= rank("chunk", gold)
    assert rank(retriever, gold) <= 2  # after at most the heading chunk and Ingrid's first sentence


def test_situated_texts_put_the_heading_path_before_the_chunks_under_it():
    from longrag.retrieval.situated import situated_texts

    text = "## Ingrid Solberg\n\nShe joined in 2009.\n\nNo heading here."
    units = [(0, 17), (19, 38), (40, 56)]
    doc = UnitDoc(text, units, sections=["Ingrid Solberg", "Ingrid Solberg", ""])
    heading, under, outside = situated_texts(doc, lead_chars=(0, 17))
    assert heading == "## Ingrid Solberg"  # the heading's own chunk: no prefix
    assert under == "## Ingrid Solberg Ingrid Solberg. She joined in 2009."  # the lead, then the path
    assert outside == "## Ingrid Solberg No heading here."  # the lead only
