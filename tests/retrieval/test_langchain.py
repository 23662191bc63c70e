"""The corpus as a LangChain retriever: Documents with exact offsets in their metadata."""

from __future__ import annotations

from langchain_core.retrievers import BaseRetriever

from longrag.config import get_settings
from longrag.services.corpus import Corpus

TEXT = ("The Eiffel Tower is in Paris. It was completed in 1889.\n\n"
        "Mount Fuji is the highest mountain in Japan. It last erupted in 1707.")


def test_corpus_as_langchain_retriever():
    corpus = Corpus(settings=get_settings())
    doc_id = corpus.ingest_bytes(TEXT.encode(), "t.txt").doc_id
    retriever = corpus.as_retriever(k=2, retriever="chunk")
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("When did Mount Fuji last erupt?")
    assert 1 <= len(docs) <= 2
    for d in docs:
        m = d.metadata
        assert m["doc_id"] == doc_id and TEXT[m["start"] : m["end"]] == d.page_content
        assert isinstance(m["score"], float)
    assert "Fuji" in docs[0].page_content
