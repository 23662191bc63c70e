"""Word (.docx, python-docx) and PowerPoint (.pptx, python-pptx) documents as plain text.

Both return blocks joined by blank lines, so each paragraph, table row, slide title or note is a
paragraph for the segmenter. The archive is checked by :func:`formats_zip.open_archive` before
either library opens it.
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
from longrag.retrieval.formats_zip import clean_text, join_blocks, open_archive

log = logging.getLogger(__name__)

# What python-docx / python-pptx raise on a damaged package (lxml's XMLSyntaxError is a
# SyntaxError; a missing part is a KeyError; a wrong main content type is a ValueError).
_PACKAGE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, SyntaxError,
)

_CONTENT_TYPE = re.compile(r"content type is '([^']+)'")
_WRAPPERS = ("sdt", "sdtContent", "customXml", "smartTag")  # transparent w: containers


def _package_error(label: str, exc: BaseException) -> DecodeError:
    """A library's failure to open a package as a user-facing error."""
    if isinstance(exc, ValueError) and (m := _CONTENT_TYPE.search(str(exc))):
        return DecodeError(f"the file is not a {label}: its main part has content type {m.group(1)!r}")
    return DecodeError(f"could not read the {label}: {exc}")


# -- Word ---------------------------------------------------------------------------------------
def parse_docx(data: bytes) -> str:
    """Body paragraphs and tables of a .docx in document order.

    Raises:
        DecodeError: the file is not a readable Word document.
        EmptyDocumentError: it has no text.
    """
    from docx import Document
    from docx.opc.exceptions import OpcError

    open_archive(data, "Word document").close()
    try:
        body = Document(io.BytesIO(data)).element.body
        text = join_blocks(_docx_blocks(body))
    except (OpcError, *_PACKAGE_ERRORS) as exc:
        raise _package_error("Word document (.docx)", exc) from None
    if not text.strip():
        raise EmptyDocumentError("the Word document has no text")
    log.debug("docx: %d paragraphs, %d characters", text.count("\n\n") + 1, len(text))
    return text


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
def parse_pptx(data: bytes) -> str:
    """One section per slide: ``Slide N: <title>``, its text frames and tables, then ``Notes: ...``.

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
    log.debug("pptx: %d of %d slides with text, %d characters", sum(map(bool, sections)), len(sections), len(text))
    return text


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
