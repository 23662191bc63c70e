"""SQuAD v1.1 dev articles ingested through the product's own :class:`Corpus`."""

from __future__ import annotations

import time
from pathlib import Path

from bench.data import SquadArticle
from longrag.config import Settings
from longrag.services.corpus import Corpus


def squad_corpus(articles: list[SquadArticle], data_dir: Path) -> tuple[Corpus, list[str], float]:
    """Ingest every article as one ``.txt`` document (a no-op for those already there).

    Returns:
        the corpus, the doc id of each article (same order) and the ingestion seconds.
    """
    corpus = Corpus(settings=Settings(data_dir=data_dir))
    t0 = time.perf_counter()
    doc_ids = []
    for art in articles:
        res = corpus.ingest_bytes(art.text.encode("utf-8"), f"{art.title}.txt", title=art.title)
        doc_ids.append(res.doc_id)
    seconds = time.perf_counter() - t0
    for art, doc_id in zip(articles, doc_ids):  # offsets must index exactly the article text
        if corpus.text(doc_id) != art.text:
            raise AssertionError(f"parsed text of {art.title} differs from the article text")
    return corpus, doc_ids, seconds
