"""``longrag eval --suites retrieval``: each retriever on short-sentence documents, through the
product path.

1. **Documents** (``data/situated_docs.json``, written for this evaluation): staff profiles,
   board minutes and a supply contract in Markdown, one section per person, meeting or clause.
   Only a section's heading and first sentence name its subject; every later sentence says
   "she", "the board" or "it", and the sections state the same kinds of facts, so a sentence read
   alone could belong to any section.
2. **Questions** name the subject the way its heading does and ask one fact; the gold unit is
   every chunk the product stored that overlaps the answering sentence.
3. **Measures** per document and retriever, over ``Corpus.search`` restricted to the document
   (the units ``longrag search`` returns): R@1, R@3 (a gold chunk among the first k) and MRR@10.

Each document is ingested into a fresh temporary store (never the user's) with the product's
settings, so the chunks and vectors are the ones a user's ingest makes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from longrag.config import Settings

log = logging.getLogger(__name__)

DOCS = Path(__file__).with_name("data") / "situated_docs.json"
RETRIEVERS = ("chunk", "situated", "bm25", "hybrid")
DEPTH = 10


@dataclass(frozen=True, slots=True)
class RetrievalRow:
    doc: str
    retriever: str
    question: str
    rank: int | None  # 1-based rank of the first gold chunk in the top DEPTH, None: not there


@dataclass
class RetrievalReport:
    retrievers: list[str]
    docs: list[str]
    rows: list[RetrievalRow] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for doc in [*self.docs, "all"]:
            for r in self.retrievers:
                rows = [x for x in self.rows if x.retriever == r and doc in ("all", x.doc)]
                if not rows:
                    continue
                n = len(rows)
                out.append({
                    "doc": doc, "retriever": r, "questions": n,
                    "r@1": round(sum(x.rank == 1 for x in rows) / n, 3),
                    "r@3": round(sum(x.rank is not None and x.rank <= 3 for x in rows) / n, 3),
                    "mrr@10": round(sum(1 / x.rank for x in rows if x.rank) / n, 3),
                })
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"retrievers": self.retrievers, "docs": self.docs, "summary": self.summary(),
                "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        lines = ["| document | retriever | questions | R@1 | R@3 | MRR@10 |", "| --- | --- | --- | --- | --- | --- |"]
        for s in self.summary():
            lines.append(f"| {s['doc']} | {s['retriever']} | {s['questions']} | {s['r@1']:.3f} | {s['r@3']:.3f} "
                         f"| {s['mrr@10']:.3f} |")
        return "\n".join(lines)


def load_docs(path: Path = DOCS) -> list[dict[str, Any]]:
    """The evaluation documents, each checked: every evidence sentence occurs once in its text."""
    docs = json.loads(path.read_text(encoding="utf-8"))
    for d in docs:
        for q in d["questions"]:
            if d["text"].count(q["evidence"]) != 1:
                raise ValueError(f"{d['filename']}: evidence must occur exactly once: {q['evidence']!r}")
    return docs


def run_retrieval_eval(
    *,
    retrievers: Sequence[str] = RETRIEVERS,
    docs_path: Path = DOCS,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RetrievalReport:
    """Ingest each document into a temporary store and rank its chunks for every question with
    every retriever, under ``settings`` (default: the product's). ``progress(done, total)``
    after each question."""
    from longrag.config import Settings, get_settings
    from longrag.services.corpus import RETRIEVERS as KNOWN
    from longrag.services.corpus import Corpus

    unknown = sorted(set(retrievers) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown retriever(s) {unknown}; choose from {list(KNOWN)}")
    docs = load_docs(docs_path)
    report = RetrievalReport(list(retrievers), [d["filename"] for d in docs])
    total, done = sum(len(d["questions"]) for d in docs) * len(retrievers), 0
    with tempfile.TemporaryDirectory(prefix="longrag-eval-") as tmp:
        base = settings or get_settings()
        corpus = Corpus(settings=Settings(**{**base.model_dump(), "data_dir": Path(tmp)}))
        for d in docs:
            doc_id = corpus.ingest_bytes(d["text"].encode("utf-8"), d["filename"]).doc_id
            log.info("eval: %s -> %s", d["filename"], doc_id)
            text = corpus.text(doc_id)  # the parsed text, which the chunks' offsets index
            for q in d["questions"]:
                a = text.index(q["evidence"])
                b = a + len(q["evidence"])
                for r in retrievers:
                    hits = corpus.search(q["question"], k=DEPTH, doc_ids=[doc_id], retriever=r)
                    rank = next((i for i, h in enumerate(hits, 1) if h.start < b and h.end > a), None)
                    report.rows.append(RetrievalRow(d["filename"], r, q["question"], rank))
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return report
