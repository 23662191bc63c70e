"""Word (.docx, python-docx) and PowerPoint (.pptx, python-pptx) documents as plain text.

Both return blocks joined by blank lines, so each paragraph, table row, slide title or note is a
paragraph for the segmenter. The archive is checked by :func:`formats_zip.open_archive` before
either library opens it. Alongside the text come its layout: a Word document's sections (its
Title and heading paragraphs, nested like HTML's ``h1``..``h6``), a presentation's pages (where
each slide starts) and sections (each slide's ``Slide N: <title>`` line).
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from longrag.errors import DecodeError, EmptyDocumentError
from longrag.retrieval.formats_zip import ZipText, block_starts, clean_text, fill_starts, join_blocks, open_archive
from longrag.retrieval.parse import heading_paths

log = logging.getLogger(__name__)

# What python-docx / python-pptx raise on a damaged package (lxml's XMLSyntaxError is a
# SyntaxError; a missing part is a KeyError; a wrong main content type is a ValueError).
_PACKAGE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, SyntaxError,
)

_CONTENT_TYPE = re.compile(r"content type is '([^']+)'")
_WRAPPERS = ("sdt", "sdtContent", "customXml", "smartTag")  # transparent w: containers
_HEADING_STYLE = re.compile(r"heading ([1-9])")  # built-in style names as Word stores them
_BODY_TEXT = -1  # a style or paragraph marked as body text (outline level 9): not a heading
_TRUE = ("1", "true", "on")


def _package_error(label: str, exc: BaseException) -> DecodeError:
    """A library's failure to open a package as a user-facing error."""
    if isinstance(exc, ValueError) and (m := _CONTENT_TYPE.search(str(exc))):
        return DecodeError(f"the file is not a {label}: its main part has content type {m.group(1)!r}")
    return DecodeError(f"could not read the {label}: {exc}")


# -- Word ---------------------------------------------------------------------------------------
def parse_docx(data: bytes) -> ZipText:
    """Body paragraphs and tables of a .docx in document order, and its sections: where each
    heading paragraph (:class:`_DocxLevels`) starts, with its heading path.

    Raises:
        DecodeError: the file is not a readable Word document.
        EmptyDocumentError: it has no text.
    """
    from docx import Document
    from docx.opc.exceptions import OpcError

    open_archive(data, "Word document").close()
    try:
        document = Document(io.BytesIO(data))
        levels = _DocxLevels(document.styles.element)
        blocks = list(_docx_body(document.element.body, levels))
    except (OpcError, *_PACKAGE_ERRORS) as exc:
        raise _package_error("Word document (.docx)", exc) from None
    texts = [block for block, _ in blocks]
    text = join_blocks(texts)
    if not text.strip():
        raise EmptyDocumentError("the Word document has no text")
    heads = [(start, level, block.replace("\n", " "))
             for (block, level), start in zip(blocks, block_starts(texts))
             if level is not None and start is not None]
    log.debug("docx: %d paragraphs, %d headings, %d characters", text.count("\n\n") + 1, len(heads), len(text))
    return ZipText(text, None, heading_paths(heads) or None)


class _DocxLevels:
    """The heading level of a Word paragraph: 0 for the Title style, N for Heading N, else its
    outline level + 1 (how a heading style with a localized name, or a paragraph made a heading
    by direct formatting, is known); None for body text. A style without any of these takes its
    level from the style it is based on."""

    def __init__(self, styles: Any) -> None:
        self._own: dict[str, tuple[int | None, str | None]] = {}  # style id: (own level, based on)
        self._default: str | None = None
        for style in styles.iterchildren(_w("style")):
            if style.get(_w("type")) != "paragraph" or not (sid := style.get(_w("styleId"))):
                continue
            name = style.find(_w("name"))
            based = style.find(_w("basedOn"))
            self._own[sid] = (_style_level(name.get(_w("val"), "") if name is not None else "", style.find(_w("pPr"))),
                              based.get(_w("val")) if based is not None else None)
            if style.get(_w("default")) in _TRUE:
                self._default = sid
        self._levels: dict[str | None, int | None] = {}

    def of(self, p: Any) -> int | None:
        """The level of paragraph ``p`` (a ``w:p`` element), None when it is not a heading."""
        ppr = p.find(_w("pPr"))
        style = None
        if ppr is not None:
            if (direct := _outline_level(ppr)) is not None:
                return None if direct == _BODY_TEXT else direct
            if (pstyle := ppr.find(_w("pStyle"))) is not None:
                style = pstyle.get(_w("val"))
        return self._style(style or self._default)

    def _style(self, sid: str | None) -> int | None:
        """A paragraph style's level, through its ``basedOn`` chain (cached)."""
        if sid in self._levels:
            return self._levels[sid]
        level, seen, cur = None, set(), sid
        while cur is not None and cur in self._own and cur not in seen:
            seen.add(cur)
            own, cur_based = self._own[cur]
            if own is not None:
                level = None if own == _BODY_TEXT else own
                break
            cur = cur_based
        self._levels[sid] = level
        return level


def _style_level(name: str, ppr: Any) -> int | None:
    """A style's own level from its name (Title, Heading N) or outline level; None: inherited."""
    key = " ".join(name.split()).lower()
    if key == "title":
        return 0
    if m := _HEADING_STYLE.fullmatch(key):
        return int(m.group(1))
    return _outline_level(ppr) if ppr is not None else None


def _outline_level(ppr: Any) -> int | None:
    """``w:outlineLvl`` of a paragraph's or style's properties as a heading level (0 -> 1, ...),
    :data:`_BODY_TEXT` for level 9 (body text), None when it has none."""
    el = ppr.find(_w("outlineLvl"))
    if el is None:
        return None
    try:
        val = int(el.get(_w("val"), ""))
    except ValueError:
        return None
    return val + 1 if 0 <= val <= 8 else _BODY_TEXT


def _w(tag: str) -> str:
    from docx.oxml.ns import qn

    return qn(f"w:{tag}")


def _docx_children(el: Any, tags: tuple[str, ...]) -> Iterator[Any]:
    """Children of ``el`` with one of the w: ``tags``, looking through content controls."""
    wanted = {_w(t) for t in tags}
    wrappers = {_w(t) for t in _WRAPPERS}
    for child in el.iterchildren():
        if child.tag in wanted:
            yield child
        elif child.tag in wrappers:
            yield from _docx_children(child, tags)


def _docx_body(body: Any, levels: _DocxLevels) -> Iterator[tuple[str, int | None]]:
    """The blocks of :func:`_docx_blocks` for the document body, each with its heading level
    (None for body text and table rows)."""
    for el in _docx_children(body, ("p", "tbl")):
        if el.tag == _w("p"):
            yield clean_text(_docx_paragraph_text(el)), levels.of(el)
        else:
            yield from ((row, None) for row in _docx_table_rows(el))


def _docx_blocks(container: Any) -> Iterator[str]:
    """Each paragraph's text, and each table row, of a body or table cell, in order."""
    for el in _docx_children(container, ("p", "tbl")):
        if el.tag == _w("p"):
            yield clean_text(_docx_paragraph_text(el))
        else:
            yield from _docx_table_rows(el)


def _docx_paragraph_text(p: Any) -> str:
    """A paragraph's visible text, tracked insertions included and deletions left out.

    Text boxes anchored in the paragraph are skipped (their text is not in the reading flow).
    """
    runs = p.xpath(".//w:r[not(ancestor::w:del) and not(ancestor::w:moveFrom)"
                   " and not(ancestor::w:txbxContent)]")
    return "".join(r.text for r in runs)


def _docx_table_rows(tbl: Any) -> Iterator[str]:
    """One line per row, cells joined by `` | ``; a merged cell's text is in its first row only."""
    for tr in _docx_children(tbl, ("tr",)):
        cells = [
            "" if tc.vMerge == "continue" else " ".join(b.replace("\n", " ") for b in _docx_blocks(tc) if b)
            for tc in _docx_children(tr, ("tc",))
        ]
        if any(cells):
            yield " | ".join(cells).strip()


# -- PowerPoint ---------------------------------------------------------------------------------
def parse_pptx(data: bytes) -> ZipText:
    """One section per slide: ``Slide N: <title>``, its text frames and tables, then ``Notes: ...``.

    Its pages are the slides (page N is slide N: a slide without text starts where the next one
    does) and its sections the ``Slide N: <title>`` lines.

    Raises:
        DecodeError: the file is not a readable PowerPoint presentation.
        EmptyDocumentError: no slide has any text.
    """
    from pptx import Presentation
    from pptx.exc import PythonPptxError

    open_archive(data, "PowerPoint presentation").close()
    try:
        slides = list(Presentation(io.BytesIO(data)).slides)
        sections = [_pptx_slide(n, slide) for n, slide in enumerate(slides, 1)]
    except (PythonPptxError, *_PACKAGE_ERRORS) as exc:
        raise _package_error("PowerPoint presentation (.pptx)", exc) from None
    text = join_blocks(sections)
    if not text:
        raise EmptyDocumentError("the presentation has no text")
    starts = block_starts(sections)
    heads = tuple((start, block.split("\n", 1)[0]) for block, start in zip(sections, starts) if start is not None)
    log.debug("pptx: %d of %d slides with text, %d characters", len(heads), len(sections), len(text))
    return ZipText(text, tuple(fill_starts(starts, len(text))), heads)


def _pptx_slide(n: int, slide: Any) -> str:
    """``Slide N: <title>``, the slide's other text, then its notes; ``""`` for a slide without text."""
    title_shape = slide.shapes.title
    title = clean_text(title_shape.text_frame.text).replace("\n", " ") if title_shape is not None else ""
    skip = {title_shape.shape_id} if title_shape is not None else set()
    blocks = list(_pptx_shape_blocks(slide.shapes, skip))
    if slide.has_notes_slide and (frame := slide.notes_slide.notes_text_frame) is not None:
        notes = [p for p in (clean_text(p.text) for p in frame.paragraphs) if p]
        if notes:
            blocks += [f"Notes: {notes[0]}", *notes[1:]]
    if not title and not any(blocks):
        return ""
    return join_blocks([f"Slide {n}: {title}" if title else f"Slide {n}", *blocks])


def _pptx_shape_blocks(shapes: Any, skip: set[int]) -> Iterator[str]:
    """Paragraphs of text frames and rows of tables, in the slide's shape (reading) order."""
    from pptx.enum.shapes import PP_PLACEHOLDER
    from pptx.shapes.group import GroupShape

    furniture = {PP_PLACEHOLDER.DATE, PP_PLACEHOLDER.FOOTER, PP_PLACEHOLDER.SLIDE_NUMBER, PP_PLACEHOLDER.HEADER}
    for shape in shapes:
        if shape.shape_id in skip:
            continue
        if shape.is_placeholder and shape.placeholder_format.type in furniture:
            continue
        if isinstance(shape, GroupShape):
            yield from _pptx_shape_blocks(shape.shapes, skip)
        elif shape.has_table:
            for row in shape.table.rows:
                cells = [clean_text(c.text).replace("\n", " ") for c in row.cells if not c.is_spanned]
                if any(cells):
                    yield " | ".join(cells)
        elif shape.has_text_frame:
            yield from (clean_text(p.text) for p in shape.text_frame.paragraphs)
