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

:func:`parse_pdf` returns the text and the character offset where each page starts in it.
"""

from __future__ import annotations

import ctypes
import logging
import re
import statistics
import threading
from collections import Counter
from dataclasses import dataclass, field

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


def drop_furniture(pages: list[list[Line]], heights: list[float]) -> list[list[Line]]:
    """Each page's lines without running headers, footers and page numbers (no larger than the
    body text)."""
    sizes = Counter(round(ln.size) for lines in pages for ln in lines for _ in range(len(ln.text)))
    body = sizes.most_common(1)[0][0] if sizes else 0
    edges = [[ln for ln in _edge_lines(lines, h, body) if ln.size <= 1.3 * body] + [ln for ln in lines if ln.rotated]
             for lines, h in zip(pages, heights)]
    seen = Counter()
    for page_edges in edges:
        seen.update({_norm(ln.text) for ln in page_edges})
    out = []
    for lines, page_edges in zip(pages, edges):
        drop = {id(ln) for ln in page_edges
                if (is_page_number(ln.text) and not ln.rotated) or seen[_norm(ln.text)] >= 2}
        out.append([ln for ln in lines if id(ln) not in drop])
    return out


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


def parse_pdf(data: bytes) -> tuple[str, list[int]]:
    """(the PDF's text, the offset in it where each page starts)."""
    with _LOCK:
        doc = _open(data)
        try:
            pages = []
            for i in range(len(doc)):
                page = doc[i]
                try:
                    pages.append(_page_lines(page))
                finally:
                    page.close()
        except DecodeError:
            raise
        except Exception as exc:  # PdfiumError on a damaged page
            log.warning("PDF page unreadable", exc_info=True)
            raise DecodeError(f"could not read the PDF: {exc}") from None
        finally:
            doc.close()
    kept = drop_furniture([p[0] for p in pages], [p[2] for p in pages])
    counts: Counter = Counter()
    for lines in kept:
        for ln in lines:
            counts.update(w.lower() for w in _WORD.findall(ln.text)[1:-1])

    # paragraphs across the document, each a list of (page, block, line)
    paras: list[list[tuple[int, Block, Line]]] = []
    for p, lines in enumerate(kept):
        for block in reading_order(make_blocks(lines), pages[p][3]):
            for k, para in enumerate(block_paragraphs(block)):
                items = [(p, block, ln) for ln in para]
                if k == 0 and paras:
                    _, pblock, pline = paras[-1][-1]
                    if _continues(pline, pblock, para[0], block):
                        paras[-1].extend(items)
                        continue
                paras.append(items)
    out: list[str] = []
    length = 0
    starts: list[int | None] = [None] * len(pages)
    for items in paras:
        if out:
            out.append("\n\n")
            length += 2
        prev: tuple[Block, Line] | None = None
        for p, block, ln in items:
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
            prev = (block, ln)
    text = "".join(out)
    if not text.strip():
        raise EmptyDocumentError(
            "the PDF has no text layer (a scanned image?); run OCR first and upload the result"
        )
    nxt = len(text)
    for p in range(len(starts) - 1, -1, -1):  # a page without text starts where the next one does
        if starts[p] is None:
            starts[p] = nxt
        nxt = starts[p]
    return text, [int(s) for s in starts]
