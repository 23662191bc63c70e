"""Large documents: a 1,000-page PDF, a ~5 MB EPUB and scanned pages, parsed and ingested.

Generates the documents from the Gutenberg books under ``shared/datasets/gutenberg`` (synthetic
sentences where they are missing): a 1,000-page letter-size PDF (Times 11 pt, a running header
and a page number on every page) and an EPUB of XHTML chapters of about 5 MB, plus a 10-page
image-only PDF (pages drawn with Pillow, no text layer) for OCR. Each measurement runs in a
fresh child process so its peak RSS (VmHWM) is its own: parse (``parse_bytes``) for
each document, and the full ingest of the PDF (``Corpus.ingest_bytes``: parse, segment, chunk,
embed, index, store, in a temporary data dir; the embedder is loaded before the clock starts).

    .venv/bin/python -m bench.ingest_large [--pages 1000] [--epub-mb 5] [--no-ingest] [--ingest-epub]

Writes bench/results/ingest_large.json.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import DATASETS, WORK, hardware, write_result

log = logging.getLogger(__name__)

BOOKS = ["pg2600_war_and_peace.txt", "pg2701_moby_dick.txt", "pg37106_little_women.txt", "pg345_dracula.body_only.txt",
         "pg1342_pride_and_prejudice.txt", "pg1661_adventures_of_sherlock_holmes.body_only.txt",
         "pg84_frankenstein.txt", "pg2641_a_room_with_a_view.txt", "pg64317_the_great_gatsby.txt"]


def paragraphs(names: list[str] = BOOKS) -> Iterator[tuple[str, str]]:
    """(book, paragraph) from the Gutenberg books, cycling; synthetic sentences without them."""
    books = [DATASETS / "gutenberg" / b for b in names if (DATASETS / "gutenberg" / b).is_file()]
    if not books:
        rng = random.Random(0)
        words = ("river harbour library mountain question answer evidence chapter morning winter ship "
                 "stone council engineer granite channel lighthouse record weather cargo").split()
        while True:
            yield "synthetic", " ".join(
                " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + "."
                for _ in range(rng.randint(2, 6)))
    while True:
        for path in books:
            text = path.read_text(encoding="utf-8", errors="replace")
            for para in text.split("\n\n"):
                para = " ".join(para.split())
                if para:
                    yield path.stem, para


# -- documents ----------------------------------------------------------------------------------
def make_pdf(pages: int) -> bytes:
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    font, size, leading, width = "Times-Roman", 11.0, 13.0, 468.0
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(612, 792), invariant=1, pageCompression=1)
    source = paragraphs()
    page, y, book = 0, 0.0, ""

    def new_page() -> float:
        nonlocal page
        if page:
            c.showPage()
        page += 1
        c.setFont(font, 9)
        c.drawString(72, 750, f"{book.split('_', 1)[-1].replace('_', ' ').title()}  (generated for the benchmark)")
        c.drawCentredString(306, 40, str(page))
        c.setFont(font, size)
        return 720.0

    while True:
        book, para = next(source)
        if page == 0:
            y = new_page()
        for line in simpleSplit(para, font, size, width):
            if y < 72:
                if page == pages:
                    c.showPage()
                    c.save()
                    return buf.getvalue()
                y = new_page()
            c.drawString(72, y, line)
            y -= leading
        y -= 6  # paragraph gap


def make_epub(target_mb: float) -> tuple[bytes, int]:
    """An EPUB 3 of ~``target_mb`` MB (compressed) and its chapter count."""
    source = paragraphs()
    buf = io.BytesIO()
    zf = zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED)
    zf.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
    zf.writestr("META-INF/container.xml", '<?xml version="1.0"?><container version="1.0" '
                'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile '
                'full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>')
    n = 0
    while buf.tell() < target_mb * 1e6:
        n += 1
        parts, size = [f"<h1>Chapter {n}</h1>"], 0
        while size < 150_000:
            _, para = next(source)
            parts.append(f"<p>{html.escape(para)}</p>")
            size += len(para)
        zf.writestr(f"OEBPS/text/c{n}.xhtml", '<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns='
                    f'"http://www.w3.org/1999/xhtml"><head><title>Chapter {n}</title></head><body>\n'
                    + "\n".join(parts) + "\n</body></html>")
    items = "".join(f'<item id="c{i}" href="text/c{i}.xhtml" media-type="application/xhtml+xml"/>' for i in range(1, n + 1))
    spine = "".join(f'<itemref idref="c{i}"/>' for i in range(1, n + 1))
    nav = "".join(f'<li><a href="text/c{i}.xhtml">Chapter {i}</a></li>' for i in range(1, n + 1))
    zf.writestr("OEBPS/content.opf", '<?xml version="1.0" encoding="UTF-8"?><package xmlns="http://www.idpf.org/2007/opf" '
                'version="3.0" unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
                '<dc:title>Benchmark Book</dc:title></metadata><manifest><item id="nav" href="nav.xhtml" '
                f'media-type="application/xhtml+xml" properties="nav"/>{items}</manifest><spine>{spine}</spine></package>')
    zf.writestr("OEBPS/nav.xhtml", '<?xml version="1.0" encoding="UTF-8"?><html xmlns="http://www.w3.org/1999/xhtml" '
                'xmlns:epub="http://www.idpf.org/2007/ops"><head><title>Contents</title></head><body>'
                f'<nav epub:type="toc"><ol>{nav}</ol></nav></body></html>')
    zf.close()
    return buf.getvalue(), n


def make_scans(pages: int) -> tuple[bytes, str]:
    """An image-only PDF: ``pages`` letter pages of book text drawn with Pillow at 300 dpi, and
    the text drawn."""
    from PIL import Image, ImageDraw, ImageFont

    dpi = 300
    try:
        font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", round(11 * dpi / 72))
    except OSError:
        font = ImageFont.load_default(size=round(11 * dpi / 72))
    # Gutenberg marks italics with underscores: markup, not text to draw
    words = (w for _, para in paragraphs(["pg1342_pride_and_prejudice.txt"]) for w in para.replace("_", "").split())
    pitch, images, drawn = round(11 * 1.45 * dpi / 72), [], []
    for _ in range(pages):
        img = Image.new("L", (int(8.5 * dpi), 11 * dpi), 255)
        draw = ImageDraw.Draw(img)
        for y in range(dpi, 10 * dpi - pitch, pitch):
            line = [next(words)]
            while draw.textlength(" ".join(line), font=font) < 6.5 * dpi - 300:
                line.append(next(words))
            draw.text((dpi, y), " ".join(line), font=font, fill=0)
            drawn.extend(line)
        images.append(img)
    buf = io.BytesIO()
    images[0].save(buf, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return buf.getvalue(), " ".join(drawn)


def word_accuracy(reference: str, got: str) -> float:
    """Reference words recognised, in order (difflib's matching blocks over word lists)."""
    import difflib

    ref, out = reference.split(), got.split()
    return sum(b.size for b in difflib.SequenceMatcher(None, ref, out, autojunk=False).get_matching_blocks()) / len(ref)


# -- measurements (each in a child process) -------------------------------------------------------
def _rss_mb() -> float:
    """This process's peak resident set so far (VmHWM: since its exec, unlike ``ru_maxrss``,
    which Linux carries over from the parent at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_parse(path: Path) -> dict:
    from longrag.retrieval.parse import parse_bytes

    warm = make_pdf(2) if path.suffix == ".pdf" else make_epub(0.01)[0]  # imports and PDFium's start-up
    parse_bytes(warm, "warm" + path.suffix)
    data = path.read_bytes()
    before = _rss_mb()
    t0 = time.perf_counter()
    doc = parse_bytes(data, path.name)
    sec = time.perf_counter() - t0
    path.with_suffix(".parsed.txt").write_text(doc.text, encoding="utf-8")
    return {"seconds": round(sec, 2), "rss_before_mb": round(before, 1), "rss_peak_mb": round(_rss_mb(), 1),
            "chars": len(doc.text), "pages": len(doc.pages) if doc.pages else None,
            "ocr_pages": len(doc.ocr) if doc.ocr else 0}


def child_ingest(path: Path) -> dict:
    from longrag.config import Settings
    from longrag.services.corpus import Corpus

    data = path.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="longrag-ingest-large-"))
    try:
        corpus = Corpus(settings=Settings(data_dir=tmp))
        corpus.embedder.encode(["warm up"])  # model load is not ingestion
        before = _rss_mb()
        marks: dict[str, float] = {}
        t0 = time.perf_counter()
        res = corpus.ingest_bytes(data, path.name, progress=lambda s, f: marks.setdefault(s, time.perf_counter() - t0))
        sec = time.perf_counter() - t0
        return {"seconds": round(sec, 1), "parse_seconds": round(marks.get("segment", 0.0), 1),
                "stage_starts_s": {k: round(v, 1) for k, v in marks.items()},
                "sentences": res.n_sentences, "chunks": res.n_chunks,
                "rss_before_mb": round(before, 1), "rss_peak_mb": round(_rss_mb(), 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_child(step: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.ingest_large", "--child", step, str(path)],
                         capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"{step} {path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--epub-mb", type=float, default=5.0)
    ap.add_argument("--scans", type=int, default=10, help="scanned pages for OCR (0: none)")
    ap.add_argument("--no-ingest", action="store_true", help="parse only")
    ap.add_argument("--ingest-epub", action="store_true", help="ingest the EPUB too (long: embeds every chunk)")
    ap.add_argument("--child", nargs=2, metavar=("STEP", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, path = args.child
        print(json.dumps((child_parse if step == "parse" else child_ingest)(Path(path))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    hw = hardware()
    work = WORK / "ingest_large"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    t = time.perf_counter()
    pdf = work / f"book_{args.pages}p.pdf"
    pdf.write_bytes(make_pdf(args.pages))
    epub_data, chapters = make_epub(args.epub_mb)
    epub = work / "book.epub"
    epub.write_bytes(epub_data)
    log.info("generated %s (%.1f MB) and %s (%.1f MB, %d chapters) in %.0f s", pdf.name, pdf.stat().st_size / 1e6,
             epub.name, epub.stat().st_size / 1e6, chapters, time.perf_counter() - t)

    small = work / f"book_{args.pages // 4}p.pdf"
    small.write_bytes(make_pdf(args.pages // 4))
    docs = [("pdf", pdf), ("pdf_small", small), ("epub", epub)]
    from longrag.retrieval import ocr

    if args.scans and ocr.available():  # OCR: Tesseract (make system-deps)
        scans = work / f"scans_{args.scans}p.pdf"
        data, drawn = make_scans(args.scans)
        scans.write_bytes(data)
        docs.append(("scanned_pdf", scans))
    for name, path in docs:
        mb = path.stat().st_size / 1e6
        r = run_child("parse", path)
        r.update(file_mb=round(mb, 2), text_mb=round(r["chars"] / 1e6, 2), mb_per_s=round(mb / r["seconds"], 2),
                 text_mb_per_s=round(r["chars"] / 1e6 / r["seconds"], 2))
        if r["pages"]:
            r["pages_per_s"] = round(r["pages"] / r["seconds"], 2)
        r["rss_added_mb"] = round(r["rss_peak_mb"] - r["rss_before_mb"], 1)
        if name == "scanned_pdf":
            r["seconds_per_page"] = round(r["seconds"] / r["pages"], 2)
            r["ocr_word_accuracy"] = round(word_accuracy(drawn, path.with_suffix(".parsed.txt").read_text()), 4)
        results[f"parse_{name}"] = r
        log.info("parse %s: %s", name, r)
    ingest = [] if args.no_ingest else [("pdf", pdf)] + ([("epub", epub)] if args.ingest_epub else [])
    for name, path in ingest:
        r = run_child("ingest", path)
        mb = path.stat().st_size / 1e6
        r.update(file_mb=round(mb, 2), mb_per_s=round(mb / r["seconds"], 3),
                 rss_added_mb=round(r["rss_peak_mb"] - r["rss_before_mb"], 1))
        if name == "pdf":
            r["pages_per_s"] = round(args.pages / r["seconds"], 2)
        results[f"ingest_{name}"] = r
        log.info("ingest %s: %s", name, r)
    try:
        load_end = os.getloadavg()[0]
    except OSError:
        load_end = None
    write_result("ingest_large", {
        "hardware": {**hw, "load_avg_1m_at_end": load_end},
        "documents": {
            "pdf": f"{args.pages} letter pages of Gutenberg text, Times 11 pt, running header and page number "
                   "(reportlab, compressed content streams)",
            "epub": f"EPUB 3, {chapters} XHTML chapters of ~150k characters of Gutenberg text",
            "pdf_small": f"the first {args.pages // 4} pages of the same text (memory against size)",
            "scanned_pdf": f"{args.scans} image-only letter pages of Pride and Prejudice at 300 dpi (Pillow, "
                           "DejaVu Serif 11 pt), read by OCR; ocr_word_accuracy: drawn words recognised in order",
        },
        "method": "each row in a fresh process; rss_* are its peak resident set (VmHWM) before and after the step, "
                  "rss_added_mb their difference; ingest = Corpus.ingest_bytes with the embedder loaded first "
                  "(parse_seconds: until the segment stage starts)",
        "results": results,
    })


if __name__ == "__main__":
    main()
