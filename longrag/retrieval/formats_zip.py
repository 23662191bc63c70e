"""Bounded reading of ZIP-based documents (.docx, .pptx, .epub) and shared text helpers.

Every archive is checked from its central directory before anything is decompressed: the
number of members, their compression methods, the total uncompressed size and each large
member's compression ratio. :mod:`zipfile` never inflates a stored or deflated member past its
declared size, so these checks bound what the parsers (ours and python-docx / python-pptx) can
unpack; :func:`read_member` caps each read on top of that.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from longrag.errors import DecodeError, FileTooLargeError

log = logging.getLogger(__name__)

MAX_UNZIPPED_BYTES = 200 * 1024 * 1024  # all members together, as declared in the archive
MAX_MEMBERS = 10_000
MAX_RATIO = 100  # uncompressed / compressed, checked for members over RATIO_MIN_BYTES
RATIO_MIN_BYTES = 1024 * 1024
_READ_CHUNK = 1024 * 1024
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}

_ZIP_MAGIC = b"PK\x03\x04"
_CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # OLE compound file: legacy or encrypted Office
_EPUB_MIMETYPE = b"mimetype" + b"application/epub+zip"

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_SPACES = re.compile(r"[ \t\xa0]+")


def open_archive(data: bytes, label: str) -> zipfile.ZipFile:
    """``data`` as a checked ZIP archive; ``label`` ("Word document", ...) names it in errors.

    Raises:
        DecodeError: not a ZIP (corrupt, truncated, a legacy or password-protected Office file),
            encrypted members, an unsupported compression method, too many members, or a
            member whose compression ratio marks a zip bomb.
        FileTooLargeError: the members would unpack to more than :data:`MAX_UNZIPPED_BYTES`.
    """
    if data.startswith(_CFB_MAGIC):
        raise DecodeError(
            f"the {label} is a legacy (.doc/.ppt) or password-protected Office file, not an "
            "Office Open XML archive; save it unprotected in the current format and upload again"
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise DecodeError(f"the {label} is not a readable ZIP archive (corrupt or truncated?): {exc}") from None
    check_members(infos, label)
    return zf


def check_members(infos: list[zipfile.ZipInfo], label: str) -> None:
    """Refuse archives that could unpack to far more than their size (see :func:`open_archive`)."""
    if len(infos) > MAX_MEMBERS:
        raise DecodeError(f"the {label} has {len(infos)} archive members; the limit is {MAX_MEMBERS}")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise DecodeError(f"the {label} is encrypted (password-protected archive members)")
        if info.compress_type not in _METHODS:
            raise DecodeError(
                f"the {label} uses an unsupported ZIP compression method ({info.compress_type}) "
                f"for {info.filename!r}"
            )
        if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size // max(info.compress_size, 1)
            raise DecodeError(
                f"the {label} looks like a zip bomb: {info.filename!r} expands {ratio}x "
                f"(limit {MAX_RATIO}x for members over {RATIO_MIN_BYTES // (1024 * 1024)} MB)"
            )
        total += info.file_size
    if total > MAX_UNZIPPED_BYTES:
        raise FileTooLargeError(
            f"the {label} unpacks to {total / 2**20:.0f} MB; the limit is "
            f"{MAX_UNZIPPED_BYTES / 2**20:.0f} MB"
        )


def read_member(zf: zipfile.ZipFile, name: str, label: str, limit: int = MAX_UNZIPPED_BYTES) -> bytes:
    """The bytes of member ``name``, reading at most ``limit`` bytes.

    Raises:
        DecodeError: the member is missing or its compressed data is corrupt.
        FileTooLargeError: it holds more than ``limit`` bytes.
    """
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise DecodeError(f"the {label} is incomplete: {name!r} is missing") from None
    buf = bytearray()
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(_READ_CHUNK):
                buf += chunk
                if len(buf) > limit:
                    raise FileTooLargeError(
                        f"{name!r} in the {label} is over {limit / 2**20:.0f} MB; refusing to unpack it"
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise DecodeError(f"the {label} is corrupt ({name!r}: {exc})") from None
    return bytes(buf)


def sniff_kind(data: bytes) -> str | None:
    """``"epub"``, ``"docx"`` or ``"pptx"`` for a ZIP document without a file name suffix."""
    if not data.startswith(_ZIP_MAGIC):
        return None
    if data[30:58] == _EPUB_MIMETYPE:
        return "epub"
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        return None
    for member, kind in (("word/document.xml", "docx"), ("ppt/presentation.xml", "pptx"),
                         ("META-INF/container.xml", "epub")):
        if member in names:
            return kind
    return None


def clean_text(text: str) -> str:
    """One block of extracted text: line breaks as ``\\n``, runs of spaces as one, no control
    characters, each line stripped, no empty lines."""
    text = _CONTROL.sub("", _LINE_BREAKS.sub("\n", text))
    lines = (_SPACES.sub(" ", ln).strip() for ln in text.split("\n"))
    return "\n".join(ln for ln in lines if ln)


def join_blocks(blocks: Iterable[str]) -> str:
    """Non-empty blocks separated by one blank line (a paragraph break for the segmenter)."""
    return "\n\n".join(b for b in blocks if b)


def block_starts(blocks: Sequence[str]) -> list[int | None]:
    """Where each block starts in ``join_blocks(blocks)``; None for an empty block (left out)."""
    starts: list[int | None] = []
    pos, first = 0, True
    for block in blocks:
        if not block:
            starts.append(None)
            continue
        if not first:
            pos += 2
        starts.append(pos)
        pos += len(block)
        first = False
    return starts


def fill_starts(starts: Sequence[int | None], end: int) -> list[int]:
    """Page starts with a gap for each page without text: such a page starts where the next one
    does (``end``, the text's length, after the last), as a PDF's pages do."""
    out: list[int] = [0] * len(starts)
    nxt = end
    for i in range(len(starts) - 1, -1, -1):
        nxt = starts[i] if starts[i] is not None else nxt
        out[i] = nxt
    return out


class ZipText(NamedTuple):
    """A ZIP document's parsed text and its layout, as :class:`parse.ParsedDocument` stores it."""

    text: str
    pages: tuple[int, ...] | None = None  # the offset where each page (slide) starts
    sections: tuple[tuple[int, str], ...] | None = None  # (offset, heading path) where each section starts
