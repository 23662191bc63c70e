"""PDF text through PDFium (pypdfium2): reading order, whole words, paragraphs, page offsets.

PDFium gives each character of the text layer with its box, font size and weight, and marks
the word breaks it infers from glyph spacing and the hyphens it finds at line ends. Here the
characters are read page by page and joined into runs (the first half of step 1); the layout steps
(line fragments and column gutters, running headers and footers, blocks and reading order,
paragraphs, joined lines) are in :mod:`longrag.retrieval.pdf_layout`, whose docstring states
them as steps 1-5.

Pages are read one at a time (PDFium loads each page on demand and every page is closed after
use) and kept packed until the running headers are known, then laid out and appended to the text
page by page, so memory follows the size of the text, not of the PDF. A page without a usable
text layer that shows an image (a scan) is rendered and read by OCR (:mod:`longrag.retrieval.ocr`);
its lines, paragraphs and boxes come from Tesseract and go through steps 2 and 5 of
:mod:`longrag.retrieval.pdf_layout`.

:func:`parse_pdf` returns the text, the character offset where each page starts in it and the
pages read by OCR.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from longrag.errors import DecodeError, EmptyDocumentError
from longrag.retrieval.pdf_layout import (
    _SENTENCE_END,
    _WORD,
    Block,
    Line,
    _Run,
    _continues,
    _join,
    _merge_runs,
    _norm,
    block_paragraphs,
    broken,
    furniture_candidates,
    gutters,
    is_furniture,
    make_blocks,
    reading_order,
)

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
"""PDFium is not thread-safe; the API parses uploads in worker threads."""


# -- reading PDFium -------------------------------------------------------------------------------
def _open(data: bytes):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == 4 or "password" in str(exc).lower():
            raise DecodeError("the PDF is password-protected; remove the password and upload it again") from None
        raise DecodeError(f"could not read the PDF: {exc}") from None


def _page_lines(page) -> tuple[list[Line], float, float, list[tuple[float, float]]]:
    """The page's line fragments: its characters in runs, the runs merged along baselines."""
    import pypdfium2.raw as raw

    width, height = page.get_size()
    tp = page.get_textpage()
    try:
        n = raw.FPDFText_CountChars(tp.raw)
        rect = raw.FS_RECTF()
        matrix = raw.FS_MATRIX()
        ox, oy = ctypes.c_double(), ctypes.c_double()
        name = ctypes.create_string_buffer(128)
        flags = ctypes.c_int()
        runs: list[_Run] = []
        cur: _Run | None = None
        space = False
        for i in range(n):
            code = raw.FPDFText_GetUnicode(tp.raw, i)
            if code <= 0x20 and code != 2 or code in (0xA0, 0x3000, 0xFFFE, 0xFFFF, 0x7F):
                space = True
                continue
            raw.FPDFText_GetLooseCharBox(tp.raw, i, rect)
            raw.FPDFText_GetCharOrigin(tp.raw, i, ox, oy)
            raw.FPDFText_GetMatrix(tp.raw, i, matrix)  # the size on the page: font size x scale
            scale = abs(matrix.a * matrix.d - matrix.b * matrix.c) ** 0.5 or 1.0
            size = raw.FPDFText_GetFontSize(tp.raw, i) * scale or (rect.top - rect.bottom) or 1.0
            angle = raw.FPDFText_GetCharAngle(tp.raw, i)
            rotated = 0.05 < angle < 6.23
            weight = raw.FPDFText_GetFontWeight(tp.raw, i)
            if weight <= 0:
                raw.FPDFText_GetFontInfo(tp.raw, i, name, 128, ctypes.byref(flags))
                low = name.value.lower()
                bold = b"bold" in low or b"black" in low or b"heavy" in low or bool(flags.value & (1 << 18))
            else:
                bold = weight >= 600
            ch = "-" if code == 2 else chr(code)
            x0, x1, base = rect.left, rect.right, height - oy.value
            if cur is not None and cur.rotated == rotated and (
                rotated
                or (abs(base - cur.base) <= 0.3 * max(size, cur.size)
                    and x0 >= cur.chars[-1][1] - 0.1 * size and x0 - cur.x1 <= 0.35 * size)
            ):
                cur.chars.append([ch, x0, x1, space or (not rotated and x0 - cur.x1 > 0.3 * size), size, bold])
                cur.x0, cur.x1 = min(cur.x0, x0), max(cur.x1, x1)
                cur.top, cur.bottom = min(cur.top, height - rect.top), max(cur.bottom, height - rect.bottom)
            else:
                cur = _Run([[ch, x0, x1, space, size, bold]], x0, x1, base, size, rotated,
                           height - rect.top, height - rect.bottom)
                runs.append(cur)
            space = False
    finally:
        tp.close()
    cuts = gutters(runs, width)
    return _merge_runs(runs, cuts), width, height, cuts


# -- scanned pages ----------------------------------------------------------------------------
MIN_LAYER_CHARS = 16
"""A page whose text layer has fewer letters and digits than this has no usable text layer."""

MIN_IMAGE_SHARE = 0.1
"""... and is a scan if images cover at least this share of it."""


def _scanned(page, lines: list[Line], width: float, height: float) -> bool:
    """The page has no usable text layer and shows an image: a scan, for OCR."""
    import pypdfium2.raw as raw

    if sum(ch.isalnum() for ln in lines for ch in ln.text) >= MIN_LAYER_CHARS:
        return False
    area = 0.0
    for obj in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE], max_depth=4):
        left, bottom, right, top = obj.get_bounds()
        area += max(0.0, min(right, width) - max(left, 0.0)) * max(0.0, min(top, height) - max(bottom, 0.0))
    return area >= MIN_IMAGE_SHARE * max(1.0, width * height)


def _render(page) -> tuple[bytes, float, float, float]:
    """The page as a grayscale PGM image for OCR: (image, scale, width, height in points)."""
    from longrag.retrieval import ocr

    width, height = page.get_size()
    scale = ocr.render_scale(width, height)
    bitmap = page.render(scale=scale, grayscale=True, may_draw_forms=True)
    try:
        image = ocr.pgm(bitmap.to_numpy())
        return image, scale, bitmap.width / scale, bitmap.height / scale
    finally:
        bitmap.close()


def ocr_lines(found, height: float) -> list[Line]:
    """Tesseract's lines (:class:`ocr.OcrLine`) as line fragments, one block per paragraph. The
    font size is estimated from the line height (the page's typical height for lines near it)."""
    if not found:
        return []
    heights = sorted(o.bottom - o.top for o in found)
    typical = heights[len(heights) // 2]
    out = []
    for o in found:
        h = o.bottom - o.top
        size = round(2 * (typical if 0.75 * typical <= h <= 1.35 * typical else h) / 1.15) / 2 or 1.0
        out.append(Line(re.sub(r"\s+", " ", o.text).strip(), o.x0, o.x1, o.top, o.bottom,
                        o.bottom - 0.2 * size, size, False, False, o.para))
    return [ln for ln in out if ln.text and ln.top < height]


# -- pages, one at a time ---------------------------------------------------------------------
@dataclass(slots=True)
class _Page:
    """A page's line fragments, packed while the rest of the document is read: the texts joined
    by newlines (no line holds one), six numbers and a flag byte per line."""

    texts: str
    nums: array
    flags: bytes
    width: float
    height: float
    cuts: list[tuple[float, float]]
    ocr: bool  # lines from OCR; ``blocks`` numbers their paragraphs
    blocks: array | None = None
    edges: list[tuple[int, str]] = field(default_factory=list)  # furniture candidates: (index, text)

    @classmethod
    def pack(cls, lines: list[Line], width: float, height: float, cuts, ocr: bool = False) -> "_Page":
        nums = array("d")
        for ln in lines:
            nums.extend((ln.x0, ln.x1, ln.top, ln.bottom, ln.base, ln.size))
        flags = bytes(ln.bold | ln.rotated << 1 for ln in lines)
        blocks = array("i", (ln.block for ln in lines)) if ocr else None
        return cls("\n".join(ln.text for ln in lines), nums, flags, width, height, list(cuts), ocr, blocks)

    def lines(self) -> list[Line]:
        if not self.flags:
            return []
        n = self.nums
        return [Line(text, *n[6 * k : 6 * k + 6], bool(f & 1), bool(f & 2), self.blocks[k] if self.ocr else -1)
                for k, (text, f) in enumerate(zip(self.texts.split("\n"), self.flags))]


def parse_pdf(data: bytes, progress: Callable[[float], None] | None = None,
              detail: Callable[[str], None] | None = None) -> PdfText:
    """The PDF's text, the offset in it where each page starts and the pages read by OCR.

    Pages are read one at a time and kept packed (:class:`_Page`) until the running headers of
    the whole document are known; then each page is laid out, appended to the text and dropped.
    A page without a usable text layer that shows an image is read by OCR (:mod:`ocr`).
    ``progress`` gets the fraction of the work done, page by page; ``detail`` gets, after each
    page, where the work is in words: ``"page 37 of 1000"`` while pages are read, then
    ``"laying out page 37 of 1000"``.

    Raises:
        DecodeError: unreadable or password-protected; scanned pages where OCR finds no text
            and no other page has any; a scanned page while OCR (Tesseract) is not installed, in a
            PDF with other pages.
        EmptyDocumentError: no text and no scanned page, or only scanned pages and no OCR.
    """
    from longrag.retrieval import ocr

    report = _Progress(progress)
    pages: list[_Page | None] = []
    scans: list[int] = []  # 0-based pages that are scans; ``read``: those OCR found text on
    read: list[int] = []
    sizes: Counter = Counter()
    counts: Counter = Counter()
    can_ocr: bool | None = None
    with _LOCK:
        doc = _open(data)
    try:
        with _LOCK:
            n = len(doc)
        for i in range(n):
            image, from_ocr = None, False
            with _LOCK:
                try:
                    page = doc[i]
                    try:
                        lines, width, height, cuts = _page_lines(page)
                        if _scanned(page, lines, width, height):
                            scans.append(i)
                            if can_ocr is None:
                                can_ocr = ocr.available()
                            if can_ocr:
                                image, scale, width, height = _render(page)
                    finally:
                        page.close()
                except Exception as exc:  # PdfiumError on a damaged page
                    log.warning("PDF page unreadable", exc_info=True)
                    raise DecodeError(f"could not read the PDF: {exc}") from None
            if image is not None:  # OCR outside the lock: PDFium is free for other uploads meanwhile
                found = ocr_lines(ocr.recognise(image, scale, i + 1), height)
                image = None
                if found:
                    lines, cuts, from_ocr = found, [], True
                    read.append(i)
            for ln in lines:
                sizes[round(ln.size)] += len(ln.text)
                counts.update(w.lower() for w in _WORD.findall(ln.text)[1:-1])
            pages.append(_Page.pack(lines, width, height, cuts, ocr=from_ocr))
            report(0.9 * (i + 1) / max(1, n))
            if detail is not None:
                detail(f"page {i + 1} of {n}")
    finally:
        with _LOCK:
            doc.close()
    if scans and not can_ocr:
        if len(scans) == len(pages):
            raise EmptyDocumentError(
                f"the PDF has no text layer (a scanned image?) and OCR is not available: {ocr.INSTALL_HINT}"
            )
        raise DecodeError(
            f"{_pages_named(scans)} of the PDF {'is a scanned image' if len(scans) == 1 else 'are scanned images'} "
            f"without a text layer, and OCR is not available: {ocr.INSTALL_HINT}"
        )

    # running headers and footers: edge lines whose text recurs on other pages
    body = sizes.most_common(1)[0][0] if sizes else 0
    seen: Counter = Counter()
    for pg in pages:
        lines = pg.lines()
        index = {id(ln): k for k, ln in enumerate(lines)}
        pg.edges = [(index[id(ln)], ln.text) for ln in furniture_candidates(lines, pg.height, body)]
        seen.update({_norm(t) for _, t in pg.edges})
    drops: list[set[int]] = []
    for pg in pages:
        rows = pg.lines() if pg.edges else []
        drop = {k for k, _ in pg.edges if is_furniture(rows[k], seen)}
        for k in drop:
            counts.subtract(w.lower() for w in _WORD.findall(rows[k].text)[1:-1])
        drops.append(drop)
        pg.edges = []

    text, starts = _lay_out(pages, drops, counts, report, detail)
    if not text.strip():
        if scans and can_ocr:
            raise DecodeError(
                f"no text recognised on the scanned {_pages_named(scans, 'page')} of the PDF "
                "(OCR found no words: an image without text, or too noisy to read)"
            )
        raise EmptyDocumentError("the PDF has no text layer (a scanned image?); run OCR first and upload the result")
    report(1.0)
    return PdfText(text, starts, [p + 1 for p in read])


def _lay_out(pages: list[_Page | None], drops: list[set[int]], counts: Counter,
             report: "_Progress", detail: Callable[[str], None] | None = None) -> tuple[str, list[int]]:
    """Lay each page out in turn (blocks, reading order, paragraphs, joined lines) and append it to
    the text; a paragraph that runs on from one page into the next is continued. Each packed page
    is dropped once it is laid out (``detail`` hears of each)."""
    chunks: list[str] = []  # the text so far, less ``out``
    out: list[str] = []  # this page's pieces (and the last piece of the page before)
    length = 0
    starts: list[int | None] = [None] * len(pages)
    tail: tuple[Block, Line] | None = None  # the last line of the last paragraph, for continuations
    prev: tuple[Block, Line] | None = None  # the last line emitted in the current paragraph
    emitted = False
    for p in range(len(pages)):
        pg = pages[p]
        pages[p] = None
        lines = [ln for k, ln in enumerate(pg.lines()) if k not in drops[p]]
        for block in _page_blocks(pg, lines):
            paras = [block.lines] if pg.ocr else block_paragraphs(block)
            for k, para in enumerate(paras):
                if not (k == 0 and tail is not None and _continues(tail[1], tail[0], para[0], block)):
                    if emitted:
                        out.append("\n\n")
                        length += 2
                    prev = None
                for ln in para:
                    text = re.sub(r"\s+", " ", ln.text).strip()
                    if not text:
                        continue
                    if prev is not None:
                        pb, pl = prev
                        short = pb is block and broken(pl, ln, block) and not _SENTENCE_END.search(pl.text)
                        sep = _join(out[-1], text, counts, short)
                        if sep == "\b":
                            out[-1] = out[-1][:-1]
                            length -= 1
                            sep = ""
                        out.append(sep)
                        length += len(sep)
                    if starts[p] is None:
                        starts[p] = length
                    out.append(text)
                    length += len(text)
                    emitted = True
                    prev = (block, ln)
                tail = (block, para[-1])
        if len(out) > 1:  # keep the last piece: the next page may join onto it
            chunks.append("".join(out[:-1]))
            del out[:-1]
        report(0.9 + 0.1 * (p + 1) / len(pages))
        if detail is not None:
            detail(f"laying out page {p + 1} of {len(pages)}")
    chunks.extend(out)
    text = "".join(chunks)
    del chunks, out
    nxt = len(text)
    for p in range(len(starts) - 1, -1, -1):  # a page without text starts where the next one does
        if starts[p] is None:
            starts[p] = nxt
        nxt = starts[p]
    return text, [int(s) for s in starts]


def _page_blocks(pg: _Page, lines: list[Line]) -> list[Block]:
    """A page's blocks in reading order: OCR's paragraphs in its order, else :func:`make_blocks`
    in :func:`reading_order`."""
    if not pg.ocr:
        return reading_order(make_blocks(lines), pg.cuts)
    blocks: dict[int, Block] = {}
    for ln in lines:
        blocks.setdefault(ln.block, Block()).add(ln)
    return list(blocks.values())


def _pages_named(pages: list[int], noun: str | None = None) -> str:
    """'page 3', 'pages 1, 2 and 5' (0-based in, 1-based out); at most ten listed."""
    nums = [str(p + 1) for p in pages[:10]] + ([f"{len(pages) - 10} more"] if len(pages) > 10 else [])
    word = noun or "page"
    if len(nums) == 1:
        return f"{word} {nums[0]}"
    return f"{word}s {', '.join(nums[:-1])} and {nums[-1]}"


class _Progress:
    """Calls ``progress`` with a fraction when it has moved on by a percent (and at 1.0)."""

    def __init__(self, progress: Callable[[float], None] | None):
        self.progress = progress
        self.last = -1.0

    def __call__(self, fraction: float) -> None:
        if self.progress is not None and (fraction - self.last >= 0.01 or (fraction >= 1.0 > self.last)):
            self.last = fraction
            self.progress(min(1.0, fraction))


class PdfText(NamedTuple):
    text: str
    pages: list[int]  # the offset in ``text`` where each page starts
    ocr: list[int]  # 1-based numbers of the pages whose text OCR recognised
