"""Page layout from positioned text, without PDFium: lines, running headers and footers,
blocks, reading order, paragraphs and the joined text.

:mod:`longrag.retrieval.formats_pdf` reads each character of PDFium's text layer with its box,
font size and weight (and the word breaks and line-end hyphens PDFium infers) and joins the
characters into runs (:class:`_Run`, the first half of step 1) as it reads them; OCR gives a
scanned page's lines. The rest is done here, with no PDFium objects, in five steps:

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

A scanned page's lines, paragraphs and boxes come from OCR and go through steps 2 and 5.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

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

# -- runs and line fragments ----------------------------------------------------------------
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
