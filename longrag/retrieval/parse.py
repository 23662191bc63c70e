"""Turn uploaded bytes into the parsed text that every offset indexes.

For UTF-8 ``.txt`` and ``.md`` the parsed text is the file's content unchanged, so
``text[start:end]`` equals ``content[start:end]`` for every evidence span.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import PurePath

from longrag.errors import DecodeError, EmptyDocumentError, UnsupportedFileTypeError

log = logging.getLogger(__name__)

TEXT_TYPES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown"}
HTML_TYPES = {".html": "html", ".htm": "html"}
PDF_TYPES = {".pdf": "pdf"}
SUPPORTED = {**TEXT_TYPES, **HTML_TYPES, **PDF_TYPES}

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    text: str
    kind: str  # text | markdown | html | pdf


def detect_kind(filename: str | None, data: bytes) -> str:
    """The document kind from the file name, falling back to sniffing the bytes."""
    if data[:5] == b"%PDF-":
        return "pdf"
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in SUPPORTED:
        return SUPPORTED[suffix]
    if not suffix:
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

    soup = BeautifulSoup(_decode_utf8(data), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    text = soup.get_text("\n")
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


def parse_bytes(data: bytes, filename: str | None = None) -> ParsedDocument:
    """Parse ``data`` into text. Raises a :class:`LongragError` subclass on bad input."""
    if not data:
        raise EmptyDocumentError("the file is empty (0 bytes)")
    kind = detect_kind(filename, data)
    if kind == "pdf":
        text = _parse_pdf(data)
    elif kind == "html":
        text = _parse_html(data)
    else:
        text = _decode_utf8(data)
    if not text.strip():
        raise EmptyDocumentError("the document has no text (only whitespace)")
    return ParsedDocument(text=text, kind=kind)
