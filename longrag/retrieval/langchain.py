"""LangChain interface: a ``BaseRetriever`` over any longrag search function."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from longrag.retrieval.types import Hit

SearchFn = Callable[..., list[Hit]]


class LongragRetriever(BaseRetriever):
    """Returns ``Document``s whose metadata carries ``doc_id``, ``start``, ``end`` and ``score``.

    Args:
        search: ``search(query, k=..., doc_ids=..., retriever=...) -> list[Hit]``
            (``Corpus.search``, or :meth:`longrag.services.corpus.Corpus.as_retriever`).
        k: hits per query.
        doc_ids: restrict to these documents.
        retriever: ``chunk`` | ``situated`` | ``bm25`` | ``hybrid`` (None: the default).
    """

    search: SearchFn
    k: int = 10
    doc_ids: Sequence[str] | None = None
    retriever: str | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = self.search(query, k=self.k, doc_ids=self.doc_ids, retriever=self.retriever)
        return [
            Document(
                page_content=h.text,
                metadata={"doc_id": h.doc_id, "start": h.start, "end": h.end, "score": h.score},
            )
            for h in hits
        ]
