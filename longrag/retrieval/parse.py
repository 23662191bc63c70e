"""Turn uploaded bytes into the parsed text that every offset indexes.

For UTF-8 ``.txt`` and ``.md`` the parsed text is the file's content unchanged, so
``text[start:end]`` equals ``content[start:end]`` for every evidence span. Every other kind
(HTML, PDF, Word, PowerPoint, EPUB) is converted once, here, and that text is what is stored,
shown and indexed. The ZIP-based formats live in ``formats_office`` and ``formats_epub``, PDFs
in ``formats_pdf`` (its layout in ``pdf_layout``, scanned pages read by OCR, ``ocr``; see
docs/formats.md).
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

from longrag.errors import DecodeError, EmptyDocumentError, UnsupportedFileTypeError

if TYPE_CHECKING:
    from bs4 import Tag

    from longrag.retrieval.formats_zip import ZipText

log = logging.getLogger(__name__)

TEXT_TYPES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown"}
HTML_TYPES = {".html": "html", ".htm": "html"}
PDF_TYPES = {".pdf": "pdf"}
ZIP_TYPES = {".docx": "docx", ".pptx": "pptx", ".epub": "epub"}
SUPPORTED = {**TEXT_TYPES, **HTML_TYPES, **PDF_TYPES, **ZIP_TYPES}

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


HEADING_SEP = " > "
"""Joins the headings of a section's path, outermost first."""


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    text: str
    kind: str  # text | markdown | html | pdf | docx | pptx | epub
    pages: tuple[int, ...] | None = None  # PDF, PPTX: the offset in ``text`` where each page (slide) starts
    # (offset, heading path) where each section starts; "" where the text leaves every section
    sections: tuple[tuple[int, str], ...] | None = None
    ocr: tuple[int, ...] | None = None  # PDF: the 1-based pages whose text OCR recognised (scans)

    def artifacts(self) -> dict[str, bytes]:
        """What :func:`locate` reads, and which pages OCR read (``ocr``), as the store's
        per-document artifacts (JSON)."""
        out = {}
        if self.pages is not None:
            out["pages"] = json.dumps(list(self.pages)).encode()
        if self.sections:
            out["sections"] = json.dumps([list(s) for s in self.sections], ensure_ascii=False).encode()
        if self.ocr:
            out["ocr"] = json.dumps(list(self.ocr)).encode()
        return out


def locate(pages: bytes | None, sections: bytes | None, offset: int) -> tuple[int | None, str | None]:
    """The 1-based page and the heading path at ``offset``, from the ``pages`` and ``sections``
    artifacts of :meth:`ParsedDocument.artifacts` (None where the document has none)."""
    page = section = None
    if pages:
        starts = json.loads(pages)
        page = bisect.bisect_right(starts, offset) or None
    if sections:
        section = section_at(json.loads(sections), [offset])[0] or None  # "": text outside every section
    return page, section


def section_at(sections: Sequence[tuple[int, str]] | None, offsets: Sequence[int]) -> list[str]:
    """The heading path at each of ``offsets`` (sorted ``sections`` as in
    :attr:`ParsedDocument.sections`; ``""`` before the first heading or outside every section)."""
    if not sections:
        return ["" for _ in offsets]
    starts = [o for o, _ in sections]
    return [sections[i - 1][1] if (i := bisect.bisect_right(starts, off)) else "" for off in offsets]


def nearest_heading(path: str) -> str:
    """The innermost heading of a heading path ("Staff > Ingrid Solberg" -> "Ingrid Solberg")."""
    return path.rsplit(HEADING_SEP, 1)[-1]


def opens_section(text: str, path: str) -> bool:
    """Whether ``text`` begins with the innermost heading of ``path`` (Markdown's ``#`` marks
    aside): the unit that starts its section, which needs no second copy of its heading."""
    heading = nearest_heading(path)
    return bool(heading) and text.lstrip("# ").startswith(heading)


def heading_paths(heads: list[tuple[int, int, str]]) -> tuple[tuple[int, str], ...]:
    """(offset, level, title) in order -> (offset, "Title > Subtitle") by nesting level (a
    smaller level is an outer heading: Word's Title is 0, ``h1`` and Heading 1 are 1)."""
    stack: list[tuple[int, str]] = []
    out = []
    for offset, level, title in heads:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        out.append((offset, HEADING_SEP.join(t for _, t in stack)))
    return tuple(out)


_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(```|~~~)")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")


def markdown_sections(text: str) -> tuple[tuple[int, str], ...]:
    """Where each ATX (``## Title``) or setext heading starts, outside fenced code."""
    heads: list[tuple[int, int, str]] = []
    pos, fence, prev = 0, None, None  # prev: (offset, line) of the previous non-blank paragraph line
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if m := _FENCE.match(body):
            fence = None if fence == m.group(1) else (fence or m.group(1))
            prev = None
        elif fence is None:
            if (m := _ATX.match(body)) and m.group(2).strip():
                heads.append((pos, len(m.group(1)), m.group(2).strip()))
                prev = None
            elif prev is not None and (m := _SETEXT.match(body)):
                heads.append((prev[0], 1 if m.group(1)[0] == "=" else 2, prev[1].strip()))
                prev = None
            else:
                prev = (pos, body) if body.strip() else None
        pos += len(line)
    return heading_paths(heads)


_SLIDE = re.compile(r"(?m)(?:\A|(?<=\n\n))(Slide \d+(?:: [^\n]*)?)$")


def slide_sections(text: str) -> tuple[tuple[int, str], ...]:
    """A PowerPoint's ``Slide N: <title>`` lines (formats_office), read back from its parsed
    text, as its sections (the parser itself takes them from the slides)."""
    return tuple((m.start(), m.group(1)) for m in _SLIDE.finditer(text))


def detect_kind(filename: str | None, data: bytes) -> str:
    """The document kind from the file name, falling back to sniffing the bytes."""
    if data[:5] == b"%PDF-":
        return "pdf"
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in SUPPORTED:
        return SUPPORTED[suffix]
    if not suffix:
        from longrag.retrieval.formats_zip import sniff_kind

        if zipped := sniff_kind(data):
            return zipped
        head = data[:512].lstrip().lower()
        if head.startswith(b"<!doctype html") or head.startswith(b"<html"):
            return "html"
        return "text"
    raise UnsupportedFileTypeError(
        f"unsupported file type {suffix!r}; supported: {', '.join(sorted(SUPPORTED))}"
    )


def _decode_utf8(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"the file is not valid UTF-8 text (bad byte at offset {exc.start}); "
            "re-encode it as UTF-8 and upload again"
        ) from None
    sample = text[:65536]
    if sample and (sample.count("\x00") or len(_CONTROL.findall(sample)) > 0.01 * len(sample)):
        raise DecodeError("the file looks binary (control characters), not text")
    return text


_MARK = re.compile("\ue000([1-6])\ue001")  # where a heading opens (its level) ...
_END = "\ue002"  # ... and where it closes, each a line of its own in html_text's output


def _parse_html(data: bytes) -> tuple[str, tuple[tuple[int, str], ...]]:
    """The page's text (:func:`html_text`) and where its ``h1``..``h6`` headings start in it."""
    from bs4 import BeautifulSoup

    text, heads = html_headings(BeautifulSoup(_decode_utf8(data), "html.parser"))
    return text, heading_paths(heads)


def html_headings(root: Tag) -> tuple[str, list[tuple[int, int, str]]]:
    """:func:`html_text` of ``root`` and its ``h1``..``h6`` headings as (offset, level, title):
    the title is the heading's lines joined by spaces; a heading without text is left out.
    Changes ``root`` as :func:`html_text` does."""
    from bs4 import NavigableString

    for tag in root.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        tag.insert(0, NavigableString(f"\ue000{tag.name[1]}\ue001"))
        tag.append(NavigableString(_END))
    out: list[str] = []
    heads: list[tuple[int, int, str]] = []
    level: int | None = None  # the open heading's level, where its text starts, its lines
    start: int | None = None
    lines: list[str] = []
    pos, blank = 0, False
    # drop the marks, then collapse blank lines as html_text does; a last end mark closes all
    for ln in [*html_text(root).split("\n"), _END]:
        if (m := _MARK.fullmatch(ln)) or ln == _END:
            if level is not None and start is not None:  # a heading inside another closes the outer one
                heads.append((start, level, " ".join(lines)))
            level, start, lines = (int(m.group(1)) if m else None), None, []
            continue
        if not ln:
            if out and not blank:
                out.append("")
                pos += 1
                blank = True
            continue
        if level is not None:
            start = pos if start is None else start
            lines.append(ln)
        out.append(ln)
        pos += len(ln) + 1
        blank = False
    while out and not out[-1]:
        out.pop()
    return "\n".join(out), heads


def html_text(root: Tag) -> str:
    """The text of a parsed HTML tree (or one element of it): scripts and styles dropped, each
    text node on its own line, runs of blank lines as one blank line. Removes the dropped tags
    from ``root``."""
    for tag in root(["script", "style", "noscript", "template"]):
        tag.decompose()
    text = root.get_text("\n")
    lines = [re.sub(r"[ \t\r\f\v]+", " ", ln).strip() for ln in text.splitlines()]
    out, blank = [], False
    for ln in lines:
        if ln:
            out.append(ln)
            blank = False
        elif not blank and out:
            out.append("")
            blank = True
    return "\n".join(out).strip()


def _parse_pdf(data: bytes, progress: Callable[[float], None] | None, detail: Callable[[str], None] | None):
    """The text layer (or OCR's text, on scanned pages) in reading order, where each page starts
    in it, and the pages read by OCR (``formats_pdf``)."""
    from longrag.retrieval.formats_pdf import parse_pdf

    return parse_pdf(data, progress, detail)


def _parse_zipped(kind: str, data: bytes) -> ZipText:
    """A .docx, .pptx or .epub (bounded unzipping: ``formats_zip``) and its layout: a Word
    document's and an EPUB's headings, a presentation's slides."""
    if kind == "epub":
        from longrag.retrieval.formats_epub import parse_epub

        return parse_epub(data)
    from longrag.retrieval.formats_office import parse_docx, parse_pptx

    return parse_docx(data) if kind == "docx" else parse_pptx(data)


def parse_bytes(data: bytes, filename: str | None = None, *,
                progress: Callable[[float], None] | None = None,
                detail: Callable[[str], None] | None = None) -> ParsedDocument:
    """Parse ``data`` into text. Raises a :class:`LongragError` subclass on bad input.

    ``progress`` gets the fraction of the work done: page by page for a PDF, 1.0 at the end.
    ``detail`` gets where a PDF's parse is, in words, after each page (``"page 37 of 1000"``)."""
    if not data:
        raise EmptyDocumentError("the file is empty (0 bytes)")
    kind = detect_kind(filename, data)
    pages = sections = ocr = None
    if kind == "pdf":
        text, pages, ocr = _parse_pdf(data, progress, detail)
    elif kind == "html":
        text, sections = _parse_html(data)
    elif kind in ZIP_TYPES.values():
        text, pages, sections = _parse_zipped(kind, data)
    else:
        text = _decode_utf8(data)
    if not text.strip():
        raise EmptyDocumentError("the document has no text (only whitespace)")
    if kind == "markdown":
        sections = markdown_sections(text)
    if progress is not None and kind != "pdf":  # a PDF's parser reports page by page
        progress(1.0)
    return ParsedDocument(text=text, kind=kind, pages=tuple(pages) if pages is not None else None,
                          sections=sections or None, ocr=tuple(ocr) if ocr else None)
