"""The PDF path (retrieval/formats_pdf.py, retrieval/pdf_layout.py): reading order, whole words, de-hyphenation, running
headers and page numbers dropped, paragraphs, page offsets, and page numbers on evidence.

The fixtures are made here with reportlab: a two-column paper whose text is known word for word.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

import pytest

from longrag.errors import DecodeError, EmptyDocumentError
from longrag.retrieval.parse import parse_bytes

reportlab = pytest.importorskip("reportlab")

PAGE_W, PAGE_H = 612.0, 792.0
MARGIN, GUTTER = 54.0, 18.0
COL_W = (PAGE_W - 2 * MARGIN - GUTTER) / 2
TOP, BOTTOM = 720.0, 72.0
BODY_FONT, BODY_SIZE, LEADING = "Times-Roman", 10.0, 12.0

TITLE = "REACT: Synergizing Reasoning and Acting in Language Models"
AUTHORS = "Ada Lovelace and Charles Babbage"
HEADER = "Proceedings of the Workshop on Synthetic Documents"

BODY = [
    ("h", "1 Introduction"),
    ("p", "A document retrieval system has to read every page of a long document before it can answer "
          "questions about it. Information that is scattered across many pages is hard to find when the "
          "extraction interleaves the columns of a page or splits words apart."),
    ("p", "Comprehensive evaluation of extraction quality requires documents whose text is known exactly. "
          "We therefore generate synthetic papers with two columns, running headers, page numbers and "
          "hyphenated words, and compare the extracted words with the original manuscript."),
    ("p", "The well-known state-of-the-art approaches rely on heuristics that were tuned on scientific "
          "literature. Such heuristics are well-known to fail on unusual typography, and the "
          "state-of-the-art is rarely measured on anything but the happy path."),
    ("h", "2 Method"),
    ("p", "Our method groups characters into words, words into lines and lines into blocks. The blocks are "
          "ordered by a partial order: a block comes before another one if it lies above it in the same "
          "column, or if it lies entirely to the left of it and nothing spans both of them in between."),
    ("p", "Running headers and footers repeat on every page with small variations such as the page "
          "number. They are recognised by their position near the edge of the page and by repetition, "
          "and bare page numbers are recognised by their form alone."),
    ("p", "Paragraphs are separated by vertical whitespace or by the indentation of their first line. "
          "Within a paragraph, a word that is divided across a line end is joined again, and the hyphen "
          "is removed unless the word is a compound that also occurs with its hyphen elsewhere."),
    ("h", "3 Experiments"),
    ("p", "The lighthouse keeper on Vardo island recorded three hundred and twelve storms in the winter "
          "of eighteen eighty seven, more than in any other winter of the century."),
    ("p", "Experiments with characteristically complicated multisyllabic vocabulary demonstrate that "
          "dehyphenation reconstructs extraordinarily long words reliably, including internationalisation "
          "and telecommunications terminology that appears throughout engineering documentation."),
    ("p", "Measurements were repeated on documents produced by different generators, including documents "
          "whose content stream draws the lines of both columns row by row instead of column by column, "
          "which defeats extractors that follow the order of the content stream."),
    ("h", "4 Conclusion"),
    ("p", "Reading order, whole words and clean paragraphs are prerequisites for retrieval over long "
          "documents, and each of them can be verified automatically on generated documents."),
]

ABSTRACT = ("Abstract. We study how text is extracted from portable documents with two columns. "
            "Extraction must keep the reading order of the columns, keep words whole and drop the "
            "furniture of the page such as running headers and page numbers.")


@dataclass
class Fixture:
    data: bytes
    paragraphs: list[str]  # the text in reading order, one entry per paragraph (headings included)
    first_lines: list[str] = field(default_factory=list)  # each page's first line in reading order
    split_words: list[str] = field(default_factory=list)  # words divided at a line end with a hyphen

    @property
    def words(self) -> list[str]:
        return words(" ".join(self.paragraphs))


def words(text: str) -> list[str]:
    return re.findall(r"\w+(?:[-'’]\w+)*", text)


def _hyphenate(word: str, fits) -> tuple[str, str] | None:
    """Split ``word`` so that ``head-`` fits: at an existing hyphen, else inside a long word."""
    if "-" in word:
        for i in range(len(word) - 1, 0, -1):
            if word[i] == "-" and fits(word[: i + 1]):
                return word[: i + 1], word[i + 1 :]
        return None
    core = word.rstrip(".,;:")
    if len(core) < 7:
        return None
    for i in range(len(core) - 3, 2, -1):
        if word[i - 1] in "aeiou" and word[i] not in "aeiou" and fits(word[:i] + "-"):
            return word[:i] + "-", word[i:]
    return None


def _wrap(text: str, width: float, font: str, size: float, indent: float = 0.0,
          splits: list[str] | None = None) -> list[str]:
    from reportlab.pdfbase.pdfmetrics import stringWidth

    lines, cur = [], ""
    todo = text.split()
    while todo:
        word = todo.pop(0)
        avail = width - (indent if not lines else 0.0)
        cand = f"{cur} {word}" if cur else word
        if stringWidth(cand, font, size) <= avail:
            cur = cand
            continue
        split = _hyphenate(word, lambda h: stringWidth(f"{cur} {h}" if cur else h, font, size) <= avail)
        if split:
            if splits is not None:
                splits.append(word)
            lines.append(f"{cur} {split[0]}" if cur else split[0])
            todo.insert(0, split[1])
        else:
            lines.append(cur)
            todo.insert(0, word)
        cur = ""
    if cur:
        lines.append(cur)
    return lines


def _draw_spaced(c, x: float, y: float, text: str, font: str, size: float, tracking: float) -> None:
    """Each glyph drawn on its own at its position (no space characters), letter-spaced."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    space = stringWidth(" ", font, size)
    c.setFont(font, size)
    for ch in text:
        if ch == " ":
            x += space + tracking
            continue
        c.drawString(x, y, ch)
        x += stringWidth(ch, font, size) + tracking


def make_paper(*, order: str = "column", n_copies: int = 4, justify_words: bool = False,
               page_numbers: str = "{n}", tail: tuple[tuple[str, str], ...] = ()) -> Fixture:
    """A two-column paper: title (letter-spaced, glyph by glyph), authors, abstract across the
    page, then ``BODY`` ``n_copies`` times in two columns over as many pages as it needs, with a
    running header from page 2 and a page number at the foot of every page.

    ``order`` "row" draws the lines of both columns row by row (content-stream order interleaves
    the columns); ``justify_words`` draws each word on its own (no space characters at all);
    ``tail``: more blocks after the copies of ``BODY``."""
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(PAGE_W, PAGE_H), invariant=1)
    paragraphs: list[str] = [TITLE, AUTHORS, ABSTRACT]
    first_lines: list[str] = [TITLE]

    # title block (page 1, full width)
    tw = stringWidth(TITLE, "Helvetica-Bold", 17) + 1.2 * len(TITLE)
    _draw_spaced(c, (PAGE_W - tw) / 2, 740, TITLE, "Helvetica-Bold", 17, 1.2)
    c.setFont("Times-Italic", 11)
    c.drawCentredString(PAGE_W / 2, 718, AUTHORS)
    c.setFont(BODY_FONT, BODY_SIZE)
    y = 694.0
    for ln in _wrap(ABSTRACT, PAGE_W - 2 * MARGIN - 72, BODY_FONT, BODY_SIZE):
        c.drawString(MARGIN + 36, y, ln)
        y -= LEADING
    col_top = y - 14

    blocks = [b for _ in range(n_copies) for b in BODY] + list(tail)
    splits: list[str] = []
    page_no, col, top = 1, 0, col_top
    ops: list[tuple[int, int, float, str, str, float, bool]] = []  # (col, row, y, font, text, x, last)

    def flush_page(final: bool = False) -> None:
        nonlocal ops, page_no
        key = (lambda o: (o[0], o[1])) if order == "column" else (lambda o: (o[1], o[0]))
        if page_no > 1:
            first_lines.append(min(ops, key=lambda o: (o[0], o[1]))[4])
        for col_i, _, yy, font, text, x, last in sorted(ops, key=key):
            size = BODY_SIZE if font == BODY_FONT else 11.0
            c.setFont(font, size)
            if justify_words and not last and font == BODY_FONT:
                ws = text.split(" ")
                gap = (COL_W - (x - (MARGIN + col_i * (COL_W + GUTTER))) - sum(stringWidth(w, font, size) for w in ws))
                gap /= max(1, len(ws) - 1)
                for w in ws:
                    c.drawString(x, yy, w)
                    x += stringWidth(w, font, size) + gap
            else:
                c.drawString(x, yy, text)
        if page_no > 1:
            c.setFont("Helvetica", 8)
            c.drawString(MARGIN, 760, HEADER)
            c.drawRightString(PAGE_W - MARGIN, 760, "Lovelace and Babbage")
        c.setFont("Helvetica", 9)
        c.drawCentredString(PAGE_W / 2, 40, page_numbers.format(n=page_no))
        ops = []
        if not final:
            c.showPage()
            page_no += 1

    rows = [0, 0]
    y = top
    for kind, text in blocks:
        font = "Times-Bold" if kind == "h" else BODY_FONT
        size = 11.0 if kind == "h" else BODY_SIZE
        indent = 0.0 if kind == "h" else 12.0
        lines = _wrap(text, COL_W, font, size, indent, splits)
        if kind == "h":
            y -= 6
        for i, ln in enumerate(lines):
            if y < BOTTOM:
                if col == 0:
                    col, y = 1, top
                else:
                    flush_page()
                    col, top = 0, TOP
                    y = top
                    rows = [0, 0]
            x = MARGIN + col * (COL_W + GUTTER) + (indent if i == 0 else 0.0)
            ops.append((col, rows[col], y, font, ln, x, i == len(lines) - 1))
            rows[col] += 1
            y -= LEADING
        y -= 4 if kind == "p" else 2
        paragraphs.append(text)
    flush_page(final=True)
    c.save()
    return Fixture(buf.getvalue(), paragraphs, first_lines, splits)


# -- the tests ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paper() -> Fixture:
    return make_paper()


@pytest.mark.parametrize("kw", [{}, {"order": "row"}, {"order": "row", "justify_words": True}],
                         ids=["column-order", "row-order", "words-placed"])
def test_two_columns_in_reading_order_with_whole_words(kw):
    fx = make_paper(**kw)
    doc = parse_bytes(fx.data, "paper.pdf")
    assert doc.kind == "pdf"
    assert words(doc.text) == fx.words  # every word, whole, in reading order, nothing else
    assert doc.text.startswith(TITLE + "\n\n")  # a letter-spaced title drawn glyph by glyph


def test_paragraphs_are_separated_by_blank_lines(paper: Fixture):
    text = parse_bytes(paper.data, "paper.pdf").text
    assert text.split("\n\n") == paper.paragraphs  # headings and paragraphs, continued across columns and pages


def test_words_divided_at_line_ends_are_joined(paper: Fixture):
    text = parse_bytes(paper.data, "paper.pdf").text
    assert len(paper.split_words) >= 10
    for word in paper.split_words:
        assert word.rstrip(".,;:") in text
    assert "state-of-the-art" in text and "well-known" in text  # compounds keep their hyphen
    assert not re.search(r"\w-\s", text) and "\x02" not in text


@pytest.mark.parametrize("style", ["{n}", "Page {n} of 3", "- {n} -"])
def test_running_headers_footers_and_page_numbers_are_dropped(style):
    fx = make_paper(page_numbers=style)
    text = parse_bytes(fx.data, "paper.pdf").text
    assert HEADER not in text and "Lovelace and Babbage" not in text
    assert "Page 2" not in text and not re.search(r"(?m)^[-\s]*\d+[-\s]*$", text)
    assert words(text) == fx.words


def test_page_offsets_point_at_each_page_start(paper: Fixture):
    doc = parse_bytes(paper.data, "paper.pdf")
    assert doc.pages is not None and len(doc.pages) == len(paper.first_lines) == 3
    assert doc.pages[0] == 0 and list(doc.pages) == sorted(doc.pages)
    for start, first in zip(doc.pages, paper.first_lines):
        assert words(doc.text[start:])[:4] == words(first)[:4]
    assert json.loads(doc.artifacts()["pages"]) == list(doc.pages)


def test_a_page_without_text_starts_where_the_next_one_does():
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(PAGE_W, PAGE_H), invariant=1)
    for body in ("First page text.", None, "Third page text."):
        if body:
            c.setFont(BODY_FONT, 12)
            c.drawString(72, 700, body)
        else:
            c.rect(72, 600, 200, 100, fill=1)  # a picture, no text
        c.showPage()
    c.save()
    doc = parse_bytes(buf.getvalue(), "gap.pdf")
    assert doc.text == "First page text.\n\nThird page text."
    assert doc.pages == (0, 18, 18)


def test_password_protected_pdf_is_a_clear_error(paper: Fixture):
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter(clone_from=PdfReader(io.BytesIO(paper.data)))
    w.encrypt(user_password="secret", algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    with pytest.raises(DecodeError, match="password-protected"):
        parse_bytes(buf.getvalue(), "locked.pdf")
    # an owner password alone (no password to open it) does not stop reading
    w = PdfWriter(clone_from=PdfReader(io.BytesIO(paper.data)))
    w.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    assert words(parse_bytes(buf.getvalue(), "open.pdf").text) == paper.words


def test_pdf_without_text_layer_and_damaged_pdf_are_clear_errors(paper: Fixture):
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, invariant=1)
    c.rect(72, 72, 300, 300, fill=1)
    c.save()
    with pytest.raises(EmptyDocumentError, match="no text layer"):
        parse_bytes(buf.getvalue(), "scan.pdf")
    with pytest.raises(DecodeError, match="PDF"):
        parse_bytes(paper.data[: len(paper.data) // 3], "truncated.pdf")


def test_sections_of_markdown_html_and_slides():
    from longrag.retrieval.parse import locate, markdown_sections, slide_sections

    md = "# Guide\n\nIntro.\n\n## Install\n\n```\n# not a heading\n```\n\nUsage\n-----\n\nAsk.\n"
    doc = parse_bytes(md.encode(), "guide.md")
    assert doc.text == md and doc.pages is None
    assert [p for _, p in doc.sections] == ["Guide", "Guide > Install", "Guide > Usage"]
    art = doc.artifacts()
    assert "pages" not in art
    assert locate(None, art["sections"], md.index("not a heading")) == (None, "Guide > Install")
    assert locate(None, art["sections"], md.index("Ask")) == (None, "Guide > Usage")
    html = b"<html><body><h1>Guide</h1><p>Intro.</p><h2>Install</h2><p>Run it.</p><h2>Use</h2><p>Ask.</p></body></html>"
    doc = parse_bytes(html, "guide.html")
    assert doc.text == "Guide\nIntro.\nInstall\nRun it.\nUse\nAsk."  # the text itself is unchanged
    assert [(doc.text[o : o + 3], p) for o, p in doc.sections] == [
        ("Gui", "Guide"), ("Ins", "Guide > Install"), ("Use", "Guide > Use")]
    assert slide_sections("Slide 1: Intro\n\nhello\n\nSlide 2\n\nbye") == ((0, "Slide 1: Intro"), (23, "Slide 2"))
    assert markdown_sections("plain text") == ()


def test_html_headings_are_their_whole_text_and_empty_ones_are_none():
    html = (b"<html><body><h1><span>Big</span> <em>Guide</em></h1><h2></h2><p>Intro.</p>"
            b"<h2>Use<br>it</h2><p>Ask.</p></body></html>")
    doc = parse_bytes(html, "g.html")
    assert doc.text == "Big\n\nGuide\nIntro.\nUse\nit\nAsk."  # the text itself is unchanged
    assert doc.sections == ((0, "Big Guide"), (doc.text.index("Use"), "Big Guide > Use it"))


LIGHTHOUSE = "The treasury of Zanzibar held exactly nine hundred golden dinars in the year 1911."


def test_evidence_on_page_two_says_page_two():
    from dataclasses import asdict

    from longrag.config import get_settings
    from longrag.services.corpus import Corpus
    from longrag.services.qa import Evidence, ground

    fx = make_paper(n_copies=2, tail=(("p", LIGHTHOUSE),))
    doc = parse_bytes(fx.data, "paper.pdf")
    assert doc.text.index("Zanzibar") > doc.pages[1]  # the fixture puts it on page 2
    corpus = Corpus(settings=get_settings())
    res = corpus.ingest_bytes(fx.data, "paper.pdf")
    hits = corpus.search("How many golden dinars did the treasury of Zanzibar hold?", k=3)
    assert hits and "Zanzibar" in hits[0].text
    ev = ground("nine hundred golden dinars", hits, corpus, question="How many golden dinars?")
    assert ev[0].text == LIGHTHOUSE and ev[0].page == 2 and ev[0].section is None
    assert corpus.text(res.doc_id)[ev[0].start : ev[0].end] == ev[0].text
    assert asdict(ev[0])["page"] == 2
    assert corpus.locate(res.doc_id, 0) == (1, None)
    assert corpus.locate(res.doc_id, len(corpus.text(res.doc_id)) - 1) == (2, None)
    md = corpus.ingest_bytes(b"# Atlas\n\nMaps.\n\n## Rivers\n\nThe Amazon carries the most water.\n", "atlas.md")
    hit = corpus.search("Which river carries the most water?", k=1, doc_ids=[md.doc_id])
    ev = ground("the Amazon", hit, corpus)
    assert ev[0].page is None and ev[0].section == "Atlas > Rivers"
    assert Evidence("d", 0, 1, "x").page is None  # positional callers are unchanged
