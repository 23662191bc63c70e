"""Turn uploaded bytes into the parsed text that every offset indexes.

For UTF-8 ``.txt`` and ``.md`` the parsed text is the file's content unchanged, so
``text[start:end]`` equals ``content[start:end]`` for every evidence span. Every other kind
(HTML, PDF, Word, PowerPoint, EPUB) is converted once, here, and that text is what is stored,
shown and indexed. The ZIP-based formats live in ``formats_office`` and ``formats_epub``
(see docs/formats.md).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

from longrag.errors import DecodeError, EmptyDocumentError, UnsupportedFileTypeError

if TYPE_CHECKING:
    from bs4 import Tag

log = logging.getLogger(__name__)

TEXT_TYPES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown"}
HTML_TYPES = {".html": "html", ".htm": "html"}
PDF_TYPES = {".pdf": "pdf"}
ZIP_TYPES = {".docx": "docx", ".pptx": "pptx", ".epub": "epub"}
SUPPORTED = {**TEXT_TYPES, **HTML_TYPES, **PDF_TYPES, **ZIP_TYPES}

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    text: str
    kind: str  # text | markdown | html | pdf | docx | pptx | epub


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


def _parse_html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    return html_text(BeautifulSoup(_decode_utf8(data), "html.parser"))


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


def _parse_pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise DecodeError(f"could not read the PDF: {exc}") from None
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise EmptyDocumentError(
            "the PDF has no text layer (a scanned image?); run OCR first and upload the result"
        )
    return text


def _parse_zipped(kind: str, data: bytes) -> str:
    """A .docx, .pptx or .epub (bounded unzipping: ``formats_zip``)."""
    if kind == "epub":
        from longrag.retrieval.formats_epub import parse_epub

        return parse_epub(data)
    from longrag.retrieval.formats_office import parse_docx, parse_pptx

    return parse_docx(data) if kind == "docx" else parse_pptx(data)


def parse_bytes(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse ``data`` into text. Raises a :class:`LongragError` subclass on bad input."""
    if not data:
        raise EmptyDocumentError("the file is empty (0 bytes)")
    kind = detect_kind(filename, data)
    if kind == "pdf":
        text = _parse_pdf(data)
    elif kind == "html":
        text = _parse_html(data)
    elif kind in ZIP_TYPES.values():
        text = _parse_zipped(kind, data)
    else:
        text = _decode_utf8(data)
    if not text.strip():
        raise EmptyDocumentError("the document has no text (only whitespace)")
    return ParsedDocument(text=text, kind=kind)
