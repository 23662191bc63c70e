"""Long PDFs: every page located, memory bounded by the text (not the PDF), page-level progress.

A 300-page PDF is generated with reportlab; each page opens with a line naming it. The parser's
Python allocations (tracemalloc) must stay under 4x the parsed text plus what parsing a two-page
PDF of the same kind takes (one page's working set): pages are read one at a time, kept packed
and laid out one at a time.
"""

from __future__ import annotations

import io
import random
import sys
import tracemalloc

import pytest

from longrag.retrieval.parse import locate, parse_bytes

pytest.importorskip("reportlab")

VOCAB = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
         "have an they you were her she there been one all we their has would when if so no more harbour "
         "document retrieval answer question evidence passage chapter river mountain library").split()


def opening(page: int) -> str:
    return f"Page {page} opens with this line."


def long_pdf(pages: int, lines: int = 12, seed: int = 0) -> bytes:
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(612, 792), invariant=1)
    for p in range(1, pages + 1):
        c.setFont("Times-Roman", 10)
        y = 720
        c.drawString(72, y, opening(p))
        for _ in range(lines - 1):
            y -= 12
            c.drawString(72, y, " ".join(rng.choice(VOCAB) for _ in range(14)))
        c.showPage()
    c.save()
    return buf.getvalue()


def _peak(data: bytes, **kw):
    tracemalloc.start()
    try:
        doc = parse_bytes(data, "long.pdf", **kw)
        return doc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.timeout(600)
def test_300_pages_located_with_memory_bounded_by_the_text():
    parse_bytes(long_pdf(2), "warm.pdf")  # imports and PDFium's start-up are not the parser's
    _, one_page = _peak(long_pdf(2))
    data = long_pdf(300)
    seen: list[float] = []
    doc, peak = _peak(data, progress=seen.append)

    assert doc.kind == "pdf" and len(doc.pages) == 300 and doc.ocr is None
    for p, start in enumerate(doc.pages, 1):
        assert doc.text.startswith(opening(p), start), p
        assert locate(doc.artifacts()["pages"], None, start + 3)[0] == p
    assert list(doc.pages) == sorted(doc.pages)

    text_bytes = sys.getsizeof(doc.text)
    assert peak < 4 * text_bytes + one_page, (peak, text_bytes, one_page, len(data))

    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 50  # about one call a percent
    assert seen[len(seen) // 2] < 0.9  # most of it while pages are read


def test_ingest_reports_page_level_progress_within_the_parse_stage():
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus

    corpus = Corpus(settings=get_settings())
    stages: list[tuple[str, float]] = []
    res = corpus.ingest_bytes(long_pdf(30, lines=6), "thirty.pdf", progress=lambda s, f: stages.append((s, f)))
    parse = [f for s, f in stages if s == "parse"]
    assert len(parse) >= 30 and parse == sorted(parse) and parse[0] == 0.05 and parse[-1] == 0.15
    names = [s for s, _ in stages]
    assert names.index("segment") > max(i for i, name in enumerate(names) if name == "parse")
    assert corpus.locate(res.doc_id, corpus.text(res.doc_id).index(opening(17)))[0] == 17
