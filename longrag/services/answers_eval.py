"""``longrag eval --suites answers``: answer modes on the short-sentence documents, through the
product path.

The documents and questions of :mod:`longrag.services.retrieval_eval` (sections whose sentences
only make sense under their heading), each question asked with ``QAPipeline.ask`` in every mode
with its default options, as ``longrag ask --mode M`` sends it. Measures per mode: answer
accuracy (the expected answer occurs in the answer), evidence hit@3 (one of the first three
cited spans overlaps the answering sentence), whether every cited span is exact (its text is
the document's text at its offsets), and the median TTFT and total time.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrag.services.retrieval_eval import DOCS, load_docs

if TYPE_CHECKING:
    from longrag.config import Settings

log = logging.getLogger(__name__)

MODES = ("plain", "cfic")


@dataclass(frozen=True, slots=True)
class AnswerRow:
    doc: str
    mode: str
    question: str
    answer: str
    right: bool
    hit_at_3: bool
    exact: bool
    ttft_ms: float
    total_ms: float
    error: str | None = None


@dataclass
class AnswersReport:
    decoder: str
    modes: list[str]
    rows: list[AnswerRow] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for mode in self.modes:
            rows = [r for r in self.rows if r.mode == mode]
            ok = [r for r in rows if r.error is None]
            if not rows:
                continue
            n = len(rows)
            out.append({
                "mode": mode, "questions": n, "errors": n - len(ok),
                "accuracy": round(sum(r.right for r in ok) / n, 3),
                "evidence_hit@3": round(sum(r.hit_at_3 for r in ok) / n, 3),
                "spans_exact": all(r.exact for r in ok),
                "median_ttft_ms": round(statistics.median(r.ttft_ms for r in ok), 1) if ok else None,
                "median_total_ms": round(statistics.median(r.total_ms for r in ok), 1) if ok else None,
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "modes": self.modes, "summary": self.summary(),
                "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        lines = ["| mode | questions | accuracy | evidence hit@3 | spans exact | median TTFT ms | median total ms |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in self.summary():
            lines.append(f"| {s['mode']} | {s['questions']} | {s['accuracy']:.3f} | {s['evidence_hit@3']:.3f} | "
                         f"{'yes' if s['spans_exact'] else 'no'} | {s['median_ttft_ms']} | {s['median_total_ms']} |")
        return "\n".join(lines)


def run_answers_eval(
    *,
    decoder: str | None = None,
    modes: Sequence[str] = MODES,
    docs_path: Path = DOCS,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnswersReport:
    """Ingest each document into a temporary store and ask every question in every mode.
    ``progress(done, total)`` after each answer."""
    from longrag.config import Settings, get_settings
    from longrag.errors import LongragError
    from longrag.services import modes as mode_modules
    from longrag.services.corpus import Corpus
    from longrag.services.qa import MODES as KNOWN
    from longrag.services.qa import QAPipeline, Question

    mode_modules.load_all()
    unknown = sorted(set(modes) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {sorted(KNOWN)}")
    docs = load_docs(docs_path)
    base = settings or get_settings()
    report = AnswersReport(decoder or base.decoder, list(modes))
    total, done = sum(len(d["questions"]) for d in docs) * len(modes), 0
    with tempfile.TemporaryDirectory(prefix="longrag-eval-") as tmp:
        s = Settings(**{**base.model_dump(), "data_dir": Path(tmp), "decoder": decoder or base.decoder})
        corpus = Corpus(settings=s)
        pipe = QAPipeline(corpus, settings=s)
        for d in docs:
            doc_id = corpus.ingest_bytes(d["text"].encode("utf-8"), d["filename"]).doc_id
            text = corpus.text(doc_id)
            for mode in modes:
                for q in d["questions"]:
                    a = text.index(q["evidence"])
                    b = a + len(q["evidence"])
                    try:
                        ans = pipe.ask(Question(q["question"], doc_ids=[doc_id], mode=mode))
                        report.rows.append(AnswerRow(
                            d["filename"], mode, q["question"], ans.answer,
                            right=q["answer"].lower() in ans.answer.lower(),
                            hit_at_3=any(e.start < b and e.end > a for e in ans.evidence[:3]),
                            exact=all(text[e.start : e.end] == e.text for e in ans.evidence),
                            ttft_ms=ans.timings.get("ttft_ms", 0.0), total_ms=ans.timings.get("total_ms", 0.0)))
                    except LongragError as exc:
                        report.rows.append(AnswerRow(d["filename"], mode, q["question"], "", False, False, True,
                                                     0.0, 0.0, error=f"{exc.code}: {exc}"))
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return report
