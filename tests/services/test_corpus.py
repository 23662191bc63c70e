"""Corpus: ingest / list / delete / search keep SQLite and FAISS consistent (real MiniLM, real FAISS)."""

from __future__ import annotations

import pytest

from longrag.config import get_settings
from longrag.errors import EmptyDocumentError, FileTooLargeError, InvalidRequestError, NotFoundError, UnsupportedFileTypeError, DecodeError
from longrag.services.corpus import Corpus

DOC_A = (
    "Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics. "
    "She spent eleven years there before the war. Her research on radioactivity won two Nobel Prizes.\n\n"
    "Pierre Curie was a French physicist. He married Marie in 1895."
)
DOC_B = (
    "The Amazon river flows through Brazil. It carries more water than any other river. "
    "The rainforest around it hosts millions of species."
)


@pytest.fixture()
def corpus() -> Corpus:
    return Corpus(settings=get_settings())


def test_ingest_is_idempotent_and_offsets_exact(corpus: Corpus):
    r1 = corpus.ingest_bytes(DOC_A.encode(), "curie.txt")
    r2 = corpus.ingest_bytes(DOC_A.encode(), "copy.txt")
    assert r1.created and not r2.created and r1.doc_id == r2.doc_id
    assert len(corpus.list()) == 1
    assert corpus.text(r1.doc_id) == DOC_A
    hits = corpus.search("Where was Marie Curie born?", k=3)
    assert hits and hits[0].doc_id == r1.doc_id
    for h in hits:
        assert DOC_A[h.start : h.end] == h.text


def test_search_ranks_relevant_document_and_filters_by_doc(corpus: Corpus):
    a = corpus.ingest_bytes(DOC_A.encode(), "a.txt").doc_id
    b = corpus.ingest_bytes(DOC_B.encode(), "b.txt").doc_id
    assert corpus.search("Which river carries the most water?", k=1)[0].doc_id == b
    only_a = corpus.search("Which river carries the most water?", k=5, doc_ids=[a])
    assert only_a and all(h.doc_id == a for h in only_a)
    with pytest.raises(NotFoundError):
        corpus.search("x", doc_ids=["nope"])
    with pytest.raises(InvalidRequestError):
        corpus.search("   ")


def test_delete_removes_vectors_and_keeps_others(corpus: Corpus):
    a = corpus.ingest_bytes(DOC_A.encode(), "a.txt")
    b = corpus.ingest_bytes(DOC_B.encode(), "b.txt")
    total = corpus.index().ntotal
    assert total == a.n_chunks + b.n_chunks
    corpus.delete(a.doc_id)
    assert corpus.index().ntotal == b.n_chunks
    assert [d.doc_id for d in corpus.list()] == [b.doc_id]
    assert all(h.doc_id == b.doc_id for h in corpus.search("Marie Curie", k=10))
    with pytest.raises(NotFoundError):
        corpus.delete(a.doc_id)
    with pytest.raises(NotFoundError):
        corpus.text(a.doc_id)
    # a fresh process sees the same state from disk
    again = Corpus(settings=get_settings())
    assert again.index().ntotal == b.n_chunks


def test_index_is_rebuilt_from_sqlite_when_file_is_lost_or_stale(corpus: Corpus):
    a = corpus.ingest_bytes(DOC_A.encode(), "a.txt")
    path = get_settings().data_dir / "index" / "chunk.faiss"
    path.write_bytes(b"garbage")
    fresh = Corpus(settings=get_settings())
    assert fresh.index().ntotal == a.n_chunks
    assert fresh.search("Nobel Prizes", k=1)[0].doc_id == a.doc_id
    path.unlink()
    fresh2 = Corpus(settings=get_settings())
    assert fresh2.index().ntotal == a.n_chunks


@pytest.mark.parametrize(
    "data,name,exc",
    [
        (b"", "empty.txt", EmptyDocumentError),
        (b"   \n ", "blank.txt", EmptyDocumentError),
        (bytes(range(256)) * 4, "garbage.txt", DecodeError),
        ("\u00e9t\u00e9".encode("latin-1"), "latin.txt", DecodeError),
        (b"x", "file.docx", UnsupportedFileTypeError),
    ],
)
def test_bad_input_leaves_store_untouched(corpus: Corpus, data, name, exc):
    good = corpus.ingest_bytes(DOC_B.encode(), "b.txt")
    before = corpus.index().ntotal
    with pytest.raises(exc):
        corpus.ingest_bytes(data, name)
    assert [d.doc_id for d in corpus.list()] == [good.doc_id]
    assert corpus.index().ntotal == before
    assert corpus.search("Amazon", k=1)[0].doc_id == good.doc_id


def test_oversize_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGRAG_MAX_FILE_BYTES", "100")
    get_settings.cache_clear()
    corpus = Corpus(settings=get_settings())
    with pytest.raises(FileTooLargeError, match="limit is 100"):
        corpus.ingest_bytes(b"a" * 101, "big.txt")
    p = tmp_path / "big.txt"
    p.write_bytes(b"word " * 100)
    with pytest.raises(FileTooLargeError):
        corpus.ingest_path(p)
    assert corpus.list() == []


def test_delete_removes_per_document_file_caches(corpus: Corpus):
    doc = corpus.ingest_bytes(DOC_B.encode(), "b.txt")
    cache_dir = get_settings().data_dir / "kvcache" / doc.doc_id
    cache_dir.mkdir(parents=True)
    (cache_dir / "state.safetensors").write_bytes(b"x")
    corpus.delete(doc.doc_id)
    assert not cache_dir.exists()
