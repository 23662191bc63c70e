"""Corpus: ingest / list / delete / search keep SQLite and FAISS consistent (real MiniLM, real FAISS)."""

from __future__ import annotations

import pytest

from longrag.config import get_settings
from longrag.errors import EmptyDocumentError, FileTooLargeError, InvalidRequestError, NotFoundError, UnsupportedFileTypeError, DecodeError
from longrag.services.corpus import Corpus

pytestmark = pytest.mark.usefixtures("each_backend")  # SQLite and PostgreSQL

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
        (b"x", "file.xlsx", UnsupportedFileTypeError),
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


FILM = ("Kiss and Tell is a 1945 American comedy film. The teenage Corliss Archer was played by Shirley Temple, "
        "and the film follows her family's misunderstandings.")
PERSON = ("Shirley Temple Black was an American actress and diplomat. As an adult she served as Chief of Protocol "
          "of the United States.")
OTHER = "The Amazon river flows through Brazil and carries more water than any other river."


def test_title_link_hop_adds_the_named_documents_opening(corpus: Corpus):
    film = corpus.ingest_bytes(FILM.encode(), "film.txt", title="Kiss and Tell (1945 film)").doc_id
    person = corpus.ingest_bytes(PERSON.encode(), "person.txt", title="Shirley Temple").doc_id
    corpus.ingest_bytes(OTHER.encode(), "amazon.txt")
    query = "Corliss Archer comedy film"
    plain = corpus.search(query, k=3, retriever="bm25", link_hop=0)
    assert [h.doc_id for h in plain] == [film]  # BM25 alone never reaches the person
    hits = corpus.search(query, k=3, retriever="bm25", link_hop=1)
    assert [h.doc_id for h in hits] == [film, person]
    assert hits[1].text == PERSON[hits[1].start : hits[1].end] and hits[1].start == 0
    assert hits[1].score <= hits[0].score
    # the default (LONGRAG_LINK_HOP) follows links too; restricting the documents stops it
    assert person in [h.doc_id for h in corpus.search(query, k=3, retriever="bm25")]
    assert [h.doc_id for h in corpus.search(query, k=3, retriever="bm25", doc_ids=[film])] == [film]
    with pytest.raises(InvalidRequestError):
        corpus.search(query, link_hop=-1)
    # every answer mode retrieves through QAPipeline.retrieve, which honours Question.link_hop
    from longrag.services.qa import QAPipeline, Question

    pipe = QAPipeline(corpus)
    assert [h.doc_id for h in pipe.retrieve(Question(query, k=3, retriever="bm25", link_hop=0))[0]] == [film]
    assert [h.doc_id for h in pipe.retrieve(Question(query, k=3, retriever="bm25"))[0]] == [film, person]
    corpus.delete(person)
    assert [h.doc_id for h in corpus.search(query, k=3, retriever="bm25", link_hop=1)] == [film]


def test_text_cache_keeps_the_most_recent_texts_within_its_budget():
    from longrag.services.corpus import TextCache

    loads: list[str] = []

    def load(doc_id: str) -> str:
        loads.append(doc_id)
        return doc_id * 10

    cache = TextCache(max_chars=25)
    assert cache.get("a", load) == "a" * 10 and cache.get("b", load) == "b" * 10
    assert cache.get("a", load) == "a" * 10 and loads == ["a", "b"]  # served from memory
    cache.get("c", load)  # 30 chars > 25: the least recently used ("b") goes
    cache.get("a", load)
    cache.get("b", load)
    assert loads == ["a", "b", "c", "b"]
    assert TextCache(max_chars=5).get("x", load) == "x" * 10  # too big to keep, still returned
