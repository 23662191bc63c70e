"""Scanned PDF pages read by OCR (retrieval/ocr.py, Tesseract): word accuracy on a clean scan,
PDFs mixing text and scanned pages, the ``ocr`` artifact, noise, and Tesseract missing.

The scans are made here: a known paragraph drawn with Pillow in DejaVu Serif and saved as an
image-only PDF (no text layer).
"""

from __future__ import annotations

import difflib
import io
import json

import pytest

from longrag.errors import DecodeError, EmptyDocumentError
from longrag.retrieval import ocr
from longrag.retrieval.parse import locate, parse_bytes

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

needs_tesseract = pytest.mark.skipif(
    not ocr.available(),
    reason="tesseract (Debian tesseract-ocr + tesseract-ocr-eng) is not installed; `make system-deps` installs it",
)

PARAGRAPH = (
    "The harbour master kept a careful record of every ship that entered the bay during the long "
    "winter of that year. Each morning he walked along the stone pier, counted the vessels at anchor, "
    "and wrote their names, their cargo and the weather in a leather notebook. When the storms came "
    "in February, seven fishing boats were lost near the northern cliffs, and the town council decided "
    "to build a lighthouse on the headland. Construction began in the spring and was finished two years "
    "later, after the engineers had solved the difficult problem of bringing heavy granite blocks across "
    "the narrow channel."
)
SECOND = ("Quarterly revenue of the cooperative rose by eleven percent, driven by exports of smoked fish "
          "to the southern markets.")


def _font(px: int):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, px)
        except OSError:
            continue
    return ImageFont.load_default(size=px)  # Pillow's own scalable font


def scan(paragraphs: list[str], dpi: int = 300, pt: float = 11.0) -> Image.Image:
    """A letter-size page with the paragraphs typeset in black on white, at ``dpi``."""
    w, h = int(8.5 * dpi), int(11 * dpi)
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    font = _font(round(pt * dpi / 72))
    pitch = round(pt * 1.45 * dpi / 72)
    y = dpi
    for para in paragraphs:
        line: list[str] = []
        for word in para.split():
            if line and draw.textlength(" ".join(line + [word]), font=font) > w - 2 * dpi:
                draw.text((dpi, y), " ".join(line), font=font, fill=0)
                y += pitch
                line = [word]
            else:
                line.append(word)
        draw.text((dpi, y), " ".join(line), font=font, fill=0)
        y += 2 * pitch
    return img


def image_pdf(img: Image.Image, dpi: int = 300) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PDF", resolution=dpi)
    return buf.getvalue()


def noise_pdf() -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    cells = (rng.random((660, 510)) > 0.5).astype("uint8") * 255  # a random checkerboard of 5 px squares
    return image_pdf(Image.fromarray(cells).resize((2550, 3300), Image.NEAREST))


def text_pdf(*pages: str) -> bytes:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(612, 792), invariant=1)
    for body in pages:
        c.setFont("Times-Roman", 12)
        c.drawString(72, 700, body)
        c.showPage()
    c.save()
    return buf.getvalue()


def merged(*parts: bytes) -> bytes:
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter()
    for data in parts:
        for page in PdfReader(io.BytesIO(data)).pages:
            w.add_page(page)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def word_accuracy(reference: str, got: str) -> float:
    """Reference words recognised, in order (difflib's matching blocks over word lists)."""
    ref, out = reference.split(), got.split()
    sm = difflib.SequenceMatcher(None, ref, out, autojunk=False)
    return sum(b.size for b in sm.get_matching_blocks()) / len(ref)


def mixed_pdf() -> bytes:
    return merged(text_pdf("The first page has a text layer."), image_pdf(scan([PARAGRAPH, SECOND])),
                  text_pdf("The third page has one too."))


@needs_tesseract
@pytest.mark.parametrize("dpi", [300, 200])
def test_clean_scan_is_read_with_95_percent_of_words_right(dpi):
    doc = parse_bytes(image_pdf(scan([PARAGRAPH], dpi=dpi), dpi), "scan.pdf")
    assert doc.kind == "pdf" and doc.ocr == (1,) and doc.pages == (0,)
    acc = word_accuracy(PARAGRAPH, doc.text)
    assert acc >= 0.95, (acc, doc.text)
    assert json.loads(doc.artifacts()["ocr"]) == [1]


@needs_tesseract
def test_pdf_mixing_text_and_scanned_pages():
    doc = parse_bytes(mixed_pdf(), "mixed.pdf")
    assert doc.kind == "pdf" and doc.ocr == (2,)
    first, third = "The first page has a text layer.", "The third page has one too."
    assert doc.text.startswith(first + "\n\n") and doc.text.endswith("\n\n" + third)
    assert doc.pages[0] == 0 and doc.text[doc.pages[2]:] == third
    scanned = doc.text[doc.pages[1] : doc.pages[2]]
    assert word_accuracy(PARAGRAPH + " " + SECOND, scanned) >= 0.95
    assert "\n\n" + SECOND in scanned  # OCR's paragraphs are the text's paragraphs
    start = doc.text.index("Quarterly revenue")  # evidence on the scanned page says page 2
    art = doc.artifacts()
    assert locate(art["pages"], None, start) == (2, None) and json.loads(art["ocr"]) == [2]


@needs_tesseract
def test_scanned_page_of_noise_is_a_clear_error_and_nothing_is_stored():
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus

    with pytest.raises(DecodeError, match="no text recognised on the scanned page 1"):
        parse_bytes(noise_pdf(), "noise.pdf")
    corpus = Corpus(settings=get_settings())
    with pytest.raises(DecodeError, match="no text recognised"):
        corpus.ingest_bytes(noise_pdf(), "noise.pdf")
    assert corpus.list() == []


@needs_tesseract
def test_noise_page_in_a_pdf_with_text_is_left_empty():
    doc = parse_bytes(merged(text_pdf("Only this page has words."), noise_pdf()), "plate.pdf")
    assert doc.text == "Only this page has words." and doc.ocr is None
    assert doc.pages == (0, len(doc.text))


@needs_tesseract
def test_ingest_stores_the_ocr_artifact_and_offsets_index_the_text():
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus

    corpus = Corpus(settings=get_settings())
    stages: list[tuple[str, float]] = []
    res = corpus.ingest_bytes(mixed_pdf(), "mixed.pdf", progress=lambda s, f: stages.append((s, f)))
    assert corpus.get(res.doc_id).kind == "pdf"
    assert json.loads(corpus.store.get_artifact(res.doc_id, "ocr")) == [2]
    text = corpus.text(res.doc_id)
    start = text.index("seven fishing boats")
    assert corpus.locate(res.doc_id, start)[0] == 2
    hits = corpus.search("How many fishing boats were lost in the February storms?", k=3)
    assert hits and all(text[h.start : h.end] == h.text for h in hits if h.doc_id == res.doc_id)
    parse = [f for s, f in stages if s == "parse"]
    assert len(parse) >= 4 and parse == sorted(parse) and 0.05 <= parse[0] and parse[-1] <= 0.15


def test_without_tesseract_a_scanned_page_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ocr, "_tesseract", lambda: None)
    assert not ocr.available()
    with pytest.raises(EmptyDocumentError, match=r"no text layer \(a scanned image\?\).*install tesseract-ocr"):
        parse_bytes(image_pdf(scan([PARAGRAPH])), "scan.pdf")
    with pytest.raises(DecodeError, match=r"page 2 of the PDF is a scanned image.*install tesseract-ocr"):
        parse_bytes(mixed_pdf(), "mixed.pdf")
    # a page with a picture that is not a scan (vector graphics) is no reason to refuse the PDF
    assert parse_bytes(text_pdf("Words.", "More words."), "t.pdf").ocr is None


def test_tesseract_output_is_read_as_lines_and_paragraphs():
    head = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = [  # block, paragraph, line, word, box, confidence, text
        (1, 1, 1, 1, 300, 300, 100, 40, 96.0, "Dear"), (1, 1, 1, 2, 420, 300, 120, 40, 95.0, "reader,"),
        (1, 1, 2, 1, 300, 360, 150, 40, 91.0, "welcome."),
        (2, 1, 1, 1, 300, 500, 80, 40, 12.0, "~%"),  # a speck: too unsure, dropped
        (3, 1, 1, 1, 300, 700, 140, 40, 90.0, "Second"), (3, 1, 1, 2, 460, 700, 40, 40, -1, " "),
    ]
    tsv = "\n".join([head] + ["5\t1\t" + "\t".join(str(v) for v in r) for r in rows])
    lines = ocr.lines_from_tsv(tsv, scale=300 / 72)
    assert [(ln.text, ln.para) for ln in lines] == [("Dear reader,", 0), ("welcome.", 0), ("Second", 1)]
    assert lines[0].x0 == pytest.approx(72.0) and lines[0].bottom == pytest.approx(340 * 72 / 300)
    assert ocr.lines_from_tsv(head + "\n5\t1\t1\t1\t1\t1\t0\t0\t9\t9\t20.0\tzq", 1.0) == []  # guesses only
