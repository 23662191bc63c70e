"""PDF text through PDFium (pypdfium2): reading order, whole words, paragraphs, page offsets.

PDFium gives each character of the text layer with its box, font size and weight, and marks
the word breaks it infers from glyph spacing and the hyphens it finds at line ends. From those:

1. characters are joined into runs in content-stream order while they continue along one
   baseline without a gap wider than a word space, and runs on one baseline are merged into
   line fragments, never across a column gutter (a vertical strip almost no run covers, with
   text on both sides) nor across a gap wider than four characters;
2. running headers and footers are dropped: a line among the page's first or last two rows, in
   the top or bottom fifth of the page, set off from the rest by a line of space and no larger
   than 1.3x the body text, that is a bare page number ("7", "Page 7 of 9", "vii") or whose
   text (digits ignored) recurs there on another page; rotated lines that recur go too;
3. lines are stacked into blocks (the same font, one under the other at the line pitch, in
   one column) and blocks are put in reading order by a partial order (Breuel 2003): a block
   comes before another one it overlaps horizontally and lies above, and before one that lies
   entirely to its right unless something that spans both lies between them vertically; a
   block across a gutter counts as spanning the page;
4. blocks are split into paragraphs at first-line indents, wider line gaps and sentence-ending
   lines that stop short; a paragraph that runs on into the next column or page is continued;
5. lines are joined with a space (a line ended on purpose keeps its line break), a word divided
   at a line end is joined again (the hyphen is kept in compounds: ``state-of-the-`` + ``art``,
   before a capital, or when the document spells the word with a hyphen more often than
   without), and paragraphs are separated by one blank line.

Pages are read one at a time (PDFium loads each page on demand and every page is closed after
use) and kept packed until the running headers are known, then laid out and appended to the text
page by page, so memory follows the size of the text, not of the PDF. A page without a usable
text layer that shows an image (a scan) is rendered and read by OCR (:mod:`longrag.retrieval.ocr`);
its lines, paragraphs and boxes come from Tesseract and go through steps 2 and 5.

:func:`parse_pdf` returns the text, the character offset where each page starts in it and the
pages read by OCR.
"""

from __future__ import annotations

import ctypes
import logging
import re
import statistics
import threading
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from longrag.errors import DecodeError, EmptyDocumentError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
"""PDFium is not thread-safe; the API parses uploads in worker threads."""

_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
              "\ufb05": "st", "\ufb06": "st"}
_HYPHENS = "-\u2010\u2011\u00ad\x02"  # \x02: PDFium's code for a hyphen it found at a line end
_SENTENCE_END = re.compile(r"[.!?:;]['\"’”)\]]*$")
_ROMAN = re.compile(r"m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})", re.I)
_PAGE_NUMBER = re.compile(r"(?:page|p\.|pp\.)?\s*(\d{1,5}|[ivxlcdm]{1,8})(?:\s*(?:of|/)\s*\d{1,5})?", re.I)
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")

MAX_ORDERED = 250
"""Pages with more blocks than this (scattered labels, dense tables) are read top to bottom."""

BAND = 0.2
"""Running headers and footers are looked for in this fraction of the page at top and bottom."""


@dataclass(slots=True)
class Line:
    """A line fragment: text on one baseline within one column (top-down page coordinates)."""

    text: str
    x0: float
    x1: float
    top: float
    bottom: float
    base: float
    size: float
    bold: bool
    rotated: bool = False
    block: int = -1

    @property
    def width(self) -> float:
        return self.x1 - self.x0


@dataclass(slots=True)
class Block:
    lines: list[Line] = field(default_factory=list)
    x0: float = 0.0
    x1: float = 0.0
    top: float = 0.0
    bottom: float = 0.0

    def add(self, ln: Line) -> None:
        if not self.lines:
            self.x0, self.x1, self.top, self.bottom = ln.x0, ln.x1, ln.top, ln.bottom
        else:
            self.x0, self.x1 = min(self.x0, ln.x0), max(self.x1, ln.x1)
            self.top, self.bottom = min(self.top, ln.top), max(self.bottom, ln.bottom)
        self.lines.append(ln)


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


@dataclass(slots=True)
class _Run:
    """Characters that follow each other in the content stream along one baseline, without a
    gap wider than a word space. ``chars``: [char, x0, x1, space before, size, bold]."""

    chars: list[list]
    x0: float
    x1: float
    base: float
    size: float
    rotated: bool
    top: float
    bottom: float


def gutters(runs: list[_Run], width: float) -> list[tuple[float, float]]:
    """Vertical strips no run (or almost none) covers with text on both sides: column gutters."""
    import numpy as np

    flat = [r for r in runs if not r.rotated]
    if len(flat) < 4:
        return []
    n = int(width) + 2
    diff = np.zeros(n + 1)
    for r in flat:
        a, b = min(n, max(0, int(r.x0))), min(n, max(0, int(r.x1) + 1))  # text may lie off the page
        diff[a] += 1
        diff[b] -= 1
    cov = np.cumsum(diff)[:n]
    heavy = cov.max()
    if heavy < 2:
        return []
    low = cov <= 0.1 * heavy
    out = []
    i = 0
    while i < n:
        if not low[i]:
            i += 1
            continue
        j = i
        while j < n and low[j]:
            j += 1
        reach = int(0.4 * width)
        left, right = cov[max(0, i - reach) : i], cov[j : j + reach]
        if i > 0 and j < n and left.size and right.size and left.max() >= 0.4 * heavy and right.max() >= 0.4 * heavy:
            out.append((float(i), float(j)))
        i = j
    return out


def _merge_runs(runs: list[_Run], cuts: list[tuple[float, float]]) -> list[Line]:
    """Runs on one baseline become one line fragment, except across a column gutter (``cuts``)
    or a gap wider than four characters."""
    flat = sorted((r for r in runs if not r.rotated), key=lambda r: (r.base, r.x0))
    rows: list[list[_Run]] = []
    for r in flat:
        if rows:
            main = rows[-1][0]
            if abs(r.base - main.base) <= 0.35 * max(r.size, main.size) or (
                r.size < 0.85 * main.size and r.top >= main.top - 0.2 * main.size
                and r.bottom <= main.bottom + 0.3 * main.size
            ):
                rows[-1].append(r)
                continue
        rows.append([r])
    lines: list[Line] = []
    for row in rows:
        row.sort(key=lambda r: r.x0)
        group: list[_Run] = [row[0]]
        for r in row[1:]:
            left = max(group, key=lambda g: g.x1)
            gap = r.x0 - left.x1
            size = min(r.size, left.size)
            if gap <= 0.5 * size or (gap <= 4 * size and not any(
                    a < r.x0 and b > left.x1 for a, b in cuts)):
                group.append(r)
            else:
                lines.append(_row_line(group))
                group = [r]
        lines.append(_row_line(group))
    for r in runs:
        if r.rotated:
            lines.append(_line(r.chars, r.x0, r.x1, r.top, True, bottom=r.bottom))
    return lines


def _row_line(group: list[_Run]) -> Line:
    base = max(group, key=lambda r: (r.size, len(r.chars))).base
    chars: list[list] = []
    x1 = None
    for r in group:
        if chars and not r.chars[0][3] and r.x0 - x1 > 0.15 * r.size:
            r.chars[0][3] = True
        chars.extend(r.chars)
        x1 = r.x1 if x1 is None else max(x1, r.x1)
    return _line(chars, min(r.x0 for r in group), max(r.x1 for r in group), base, False)


def _line(chars: list, x0: float, x1: float, base: float, rotated: bool, bottom: float | None = None) -> Line:
    parts = []
    for ch, _, _, space, _, _ in chars:
        if space and parts:
            parts.append(" ")
        parts.append(_LIGATURES.get(ch, ch))
    size = Counter(round(c[4], 1) for c in chars).most_common(1)[0][0]
    bold = sum(1 for c in chars if c[5]) * 2 > len(chars)
    if rotated:  # ``base`` is the top
        return Line("".join(parts), x0, x1, base, bottom or base, bottom or base, size, bold, True)
    return Line("".join(parts), x0, x1, base - 0.8 * size, base + 0.25 * size, base, size, bold)


# -- running headers and footers --------------------------------------------------------------
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d+", "#", text.lower())).strip()


def is_page_number(text: str) -> bool:
    core = text.strip(" -–—|·•.()[]")
    m = _PAGE_NUMBER.fullmatch(core)
    if not m:
        return False
    num = m.group(1)
    return num.isdigit() or bool(_ROMAN.fullmatch(num))


def _edge_lines(lines: list[Line], height: float, body: float) -> list[Line]:
    """Lines of the page's first or last rows (at most two each way) that lie in the top or
    bottom band and are set off from the rest of the page by at least a line of space."""
    rows: list[list[Line]] = []
    for ln in sorted((ln for ln in lines if not ln.rotated), key=lambda ln: ln.top):
        if rows and ln.top < max(x.bottom for x in rows[-1]) - 0.3 * ln.size:
            rows[-1].append(ln)
        else:
            rows.append([ln])
    top = lambda row: min(x.top for x in row)  # noqa: E731
    bottom = lambda row: max(x.bottom for x in row)  # noqa: E731
    out: list[Line] = []
    if len(rows) == 1 and (bottom(rows[0]) <= BAND * height or top(rows[0]) >= (1 - BAND) * height):
        return list(rows[0])
    for k in range(min(2, len(rows) - 1)):
        if bottom(rows[k]) > BAND * height:
            break
        if top(rows[k + 1]) - bottom(rows[k]) >= 0.9 * body:
            out.extend(ln for row in rows[: k + 1] for ln in row)
            break
    for k in range(min(2, len(rows) - 1)):
        row = rows[len(rows) - 1 - k]
        if top(row) < (1 - BAND) * height:
            break
        if top(row) - bottom(rows[len(rows) - 2 - k]) >= 0.9 * body:
            out.extend(ln for row in rows[len(rows) - 1 - k :] for ln in row)
            break
    return out


def furniture_candidates(lines: list[Line], height: float, body: float) -> list[Line]:
    """The page's lines that are running headers, footers or page numbers if their text (digits
    ignored) recurs at another page's edge or is a bare page number: its edge lines no larger than
    1.3x the ``body`` text size, and its rotated lines."""
    return [ln for ln in _edge_lines(lines, height, body) if ln.size <= 1.3 * body] + [ln for ln in lines if ln.rotated]


def is_furniture(line: Line, seen: Counter) -> bool:
    """A candidate (:func:`furniture_candidates`) goes: a bare page number, or text that ``seen``
    (edge texts by :func:`_norm`, counted once per page) has on two pages or more."""
    return (is_page_number(line.text) and not line.rotated) or seen[_norm(line.text)] >= 2


# -- blocks and reading order -----------------------------------------------------------------
def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return min(a1, b1) - max(a0, b0)


def _same_style(a: Line, b: Line) -> bool:
    return a.bold == b.bold and abs(a.size - b.size) <= 0.05 * max(a.size, b.size)


def make_blocks(lines: list[Line]) -> list[Block]:
    """Stack lines into blocks: one under the other, same font, at a line pitch, one column."""
    blocks: list[Block] = []
    placed: list[Line] = []
    for ln in sorted(lines, key=lambda x: (x.top, x.x0)):
        if ln.rotated:
            ln.block = len(blocks)
            blocks.append(Block())
            blocks[-1].add(ln)
            continue
        above = None
        for prev in reversed(placed):
            if prev.base < ln.base - 0.5 * ln.size and _overlap(prev.x0, prev.x1, ln.x0, ln.x1) > 0:
                above = prev
                break
        if above is not None:
            b = blocks[above.block]
            pitch = ln.base - above.base
            ok = (
                b.lines[-1] is above
                and _same_style(above, ln)
                and pitch <= 1.75 * ln.size
                and _overlap(b.x0, b.x1, ln.x0, ln.x1) >= 0.5 * min(b.x1 - b.x0, ln.width)
                and (abs(ln.x0 - b.x0) <= 4 * ln.size or abs((ln.x0 + ln.x1) - (b.x0 + b.x1)) <= 2 * ln.size)
                and ln.x1 <= b.x1 + 4 * ln.size
            )
            if ok:
                ln.block = above.block
                b.add(ln)
                placed.append(ln)
                continue
        ln.block = len(blocks)
        blocks.append(Block())
        blocks[-1].add(ln)
        placed.append(ln)
    return blocks


def reading_order(blocks: list[Block], cuts: list[tuple[float, float]] = ()) -> list[Block]:
    """Topological order of: above within a shared x-range; left of, unless a block spanning
    both lies between them vertically. A block across a column gutter (``cuts``) spans the
    page's width. Ties go to the block nearer the top, then the left."""
    n = len(blocks)
    if n <= 1:
        return list(blocks)
    if n > MAX_ORDERED:  # the order costs n^3: a page of scattered fragments reads top to bottom
        return sorted(blocks, key=lambda b: (b.top, b.x0))
    tol = 1.0
    lo, hi = min(b.x0 for b in blocks), max(b.x1 for b in blocks)
    blocks_in = blocks
    blocks = [Block(b.lines, lo, hi, b.top, b.bottom) if any(b.x0 < g0 and b.x1 > g1 for g0, g1 in cuts) else b
              for b in blocks]
    after: list[set[int]] = [set() for _ in range(n)]
    for i, a in enumerate(blocks):
        for j, b in enumerate(blocks):
            if i == j:
                continue
            if _overlap(a.x0, a.x1, b.x0, b.x1) > tol:
                if a.bottom <= b.top + tol or (a.top < b.top and (a.top + a.bottom) < (b.top + b.bottom)
                                              and _overlap(a.top, a.bottom, b.top, b.bottom) < 0.5 * min(
                                                  a.bottom - a.top, b.bottom - b.top)):
                    after[i].add(j)
            elif a.x1 <= b.x0 + tol:
                up, low = (a, b) if a.top <= b.top else (b, a)
                between = any(
                    k not in (i, j)
                    and c.top >= up.bottom - tol and c.bottom <= low.top + tol
                    and _overlap(c.x0, c.x1, a.x0, a.x1) > tol and _overlap(c.x0, c.x1, b.x0, b.x1) > tol
                    for k, c in enumerate(blocks)
                )
                if not between:
                    after[i].add(j)
    indeg = [0] * n
    for i in range(n):
        for j in after[i]:
            indeg[j] += 1
    key = lambda k: (blocks[k].top, blocks[k].x0)  # noqa: E731
    todo, order = set(range(n)), []
    while todo:
        ready = [k for k in todo if indeg[k] == 0] or list(todo)  # a cycle: take the topmost
        k = min(ready, key=key)
        todo.discard(k)
        order.append(blocks_in[k])
        for j in after[k]:
            indeg[j] -= 1
    return order


# -- paragraphs -------------------------------------------------------------------------------
def block_paragraphs(block: Block) -> list[list[Line]]:
    """A block's lines split at first-line indents, wider gaps and short sentence-ending lines."""
    lines = block.lines
    if len(lines) == 1:
        return [lines]
    size = statistics.median(ln.size for ln in lines)
    left = Counter(round(ln.x0) for ln in lines).most_common(1)[0][0]
    pitches = [b.base - a.base for a, b in zip(lines, lines[1:])]
    pitch = statistics.median(pitches)
    paras = [[lines[0]]]
    for prev, ln, gap in zip(lines, lines[1:], pitches):
        indented = ln.x0 - left >= 0.7 * size and prev.x0 - left < 0.7 * size
        wide_gap = gap > pitch + 0.3 * size
        short_end = broken(prev, ln, block) and _SENTENCE_END.search(prev.text) is not None
        if indented or wide_gap or short_end:
            paras.append([ln])
        else:
            paras[-1].append(ln)
    return paras


def broken(prev: Line, nxt: Line, block: Block) -> bool:
    """The line ``prev`` was ended on purpose: the first word of ``nxt`` would have fit after it."""
    word = nxt.text.split(" ", 1)[0]
    per_char = nxt.width / max(1, len(nxt.text))
    return block.x1 - prev.x1 > (len(word) + 1.5) * per_char


def _full(line: Line, block: Block) -> bool:
    return line.x1 >= block.x1 - 2.5 * line.size


def _continues(prev: Line, prev_block: Block, nxt: Line, nxt_block: Block) -> bool:
    """A paragraph runs on from the end of one block into the start of the next (column or page
    break): same font, the last line full, no sentence end, the next line not indented."""
    if prev.rotated or nxt.rotated or len(prev_block.lines) < 2 or not _same_style(prev, nxt):
        return False
    if _SENTENCE_END.search(prev.text) or not _full(prev, prev_block):
        return False
    return nxt.x0 - nxt_block.x0 < 0.7 * nxt.size


def _join(a: str, b: str, counts: Counter, short: bool) -> str:
    """The separator for appending line ``b`` after line ``a``: a space, a line break (after a
    short line), nothing, or "\\b": nothing, and drop a's hyphen."""
    if a and a[-1] in _HYPHENS and len(a) > 1 and a[-2].isalpha() and b[:1].isalpha():
        head = _WORD.findall(a[:-1])
        tail = _WORD.match(b)
        head_word = head[-1] if head else ""
        if a[-1] == "\u00ad":
            return "\b"
        if b[0].isupper() or "-" in head_word or (head and not a[:-1].endswith(head_word)):
            return ""
        if tail:
            joined = (head_word + tail.group(0).split("-")[0]).lower()
            hyphened = (head_word + "-" + tail.group(0)).lower()
            if counts[hyphened] > counts[joined]:
                return ""
        return "\b"
    if len(a) > 1 and not a[-2].isspace() and (a[-1] in "\u2013\u2014/" or (a[-1] in _HYPHENS and not b[:1].isalpha())):
        return ""  # "737–" + "9", "2018%20-" + "%20035", "and/" + "or"
    return "\n" if short else " "


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
