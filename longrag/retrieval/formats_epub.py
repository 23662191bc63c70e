"""EPUB 2 / 3 books as plain text, read with :mod:`zipfile`, the OPF spine and BeautifulSoup.

``META-INF/container.xml`` names the package document (OPF); its spine gives the reading order
of the chapters (linear items first, then those marked ``linear="no"``). Chapter titles come
from the table of contents (the EPUB 3 navigation document, else the EPUB 2 NCX); a title the
chapter does not already open with is put before it as its own paragraph. Each chapter's
``<body>`` is converted like an uploaded HTML page (:func:`parse.html_text`).

The book's sections are its chapters, titled from the table of contents, and the ``h1``..``h6``
headings inside them, nested under the chapter's title: ``"Chapter One > The Voyage"``.
"""

from __future__ import annotations

import logging
import posixpath
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from longrag.errors import DecodeError, EmptyDocumentError
from longrag.retrieval.formats_zip import ZipText, block_starts, join_blocks, open_archive, read_member

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

log = logging.getLogger(__name__)

LABEL = "EPUB"
_META_LIMIT = 16 * 1024 * 1024  # container.xml, the OPF, the NCX, encryption.xml
_HTML_TYPES = {"application/xhtml+xml", "text/html"}
_NCX_TYPE = "application/x-dtbncx+xml"
# Font obfuscation (IDPF, Adobe) lists fonts in encryption.xml without any DRM on the text.
_FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}
_DRM = "DRM-protected EPUBs are not supported; remove the DRM (or export a DRM-free copy) and upload again"


@dataclass(frozen=True, slots=True)
class _Item:
    path: str  # member name in the archive
    media_type: str
    properties: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Chapter:
    text: str
    sections: tuple[tuple[int, str], ...] = ()  # (offset in ``text``, heading path)


def parse_epub(data: bytes) -> ZipText:
    """The chapters of an EPUB in spine order, separated by blank lines, and their sections.

    Raises:
        DecodeError: not a readable EPUB, or DRM-protected.
        EmptyDocumentError: no chapter has any text.
    """
    with open_archive(data, LABEL) as zf:
        _check_mimetype(zf)
        _check_drm(zf)
        opf_path = _package_path(zf)
        opf = _xml(zf, opf_path)
        manifest = _manifest(opf, posixpath.dirname(opf_path))
        titles = _toc_titles(zf, opf, manifest)
        chapters = [_chapter(zf, item, titles.get(item.path)) for item in _spine(opf, manifest)]
    texts = [c.text for c in chapters]
    text = join_blocks(texts)
    if not text.strip():
        raise EmptyDocumentError("the EPUB has no text (only images?)")
    sections = _book_sections(chapters, block_starts(texts))
    log.debug("epub: %d of %d chapters with text, %d sections, %d characters",
              sum(map(bool, texts)), len(texts), len(sections), len(text))
    return ZipText(text, None, sections or None)


def _book_sections(chapters: list[_Chapter], starts: list[int | None]) -> tuple[tuple[int, str], ...]:
    """Each chapter's sections at its offset in the book. A chapter without a title that does
    not open with a heading starts with an empty path (no section), so its text is not taken for
    part of the chapter before it; leading and repeated empty paths are left out."""
    out: list[tuple[int, str]] = []
    for chapter, start in zip(chapters, starts):
        if start is None:
            continue
        for offset, path in chapter.sections:
            if path or (out and out[-1][1]):
                out.append((start + offset, path))
    return tuple(out)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    """Descendants named ``name`` in any namespace, in document order."""
    return [el for el in root.iter() if isinstance(el.tag, str) and _local(el.tag) == name]


def _xml(zf: zipfile.ZipFile, name: str) -> ET.Element:
    try:
        return ET.fromstring(read_member(zf, name, LABEL, _META_LIMIT))
    except ET.ParseError as exc:
        raise DecodeError(f"the EPUB is corrupt: {name!r} is not well-formed XML ({exc})") from None


def _resolve(base_dir: str, href: str) -> str | None:
    """The archive member an ``href`` relative to ``base_dir`` points at (fragment dropped)."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return posixpath.normpath(posixpath.join(base_dir, unquote(parts.path)))


def _check_mimetype(zf: zipfile.ZipFile) -> None:
    if "mimetype" in zf.namelist():
        kind = read_member(zf, "mimetype", LABEL, 1024).strip()
        if kind != b"application/epub+zip":
            raise DecodeError(f"not an EPUB: its mimetype is {kind[:60].decode('ascii', 'replace')!r}")


def _check_drm(zf: zipfile.ZipFile) -> None:
    """Refuse rights-managed books: ``META-INF/rights.xml``, or anything in
    ``META-INF/encryption.xml`` beyond font obfuscation."""
    names = set(zf.namelist())
    if "META-INF/rights.xml" in names:
        raise DecodeError(_DRM)
    if "META-INF/encryption.xml" not in names:
        return
    try:
        root = _xml(zf, "META-INF/encryption.xml")
    except DecodeError:
        raise DecodeError(_DRM) from None
    for encrypted in _find_all(root, "EncryptedData"):
        methods = [m.get("Algorithm", "") for m in _find_all(encrypted, "EncryptionMethod")]
        if not methods or any(m not in _FONT_OBFUSCATION for m in methods):
            raise DecodeError(_DRM)
    log.info("EPUB encryption.xml lists obfuscated fonts only; reading it")


def _package_path(zf: zipfile.ZipFile) -> str:
    """The OPF named by ``META-INF/container.xml``."""
    if "META-INF/container.xml" not in zf.namelist():
        raise DecodeError("not an EPUB: META-INF/container.xml is missing")
    rootfiles = _find_all(_xml(zf, "META-INF/container.xml"), "rootfile")
    rootfiles.sort(key=lambda el: el.get("media-type") != "application/oebps-package+xml")
    for el in rootfiles:
        path = _resolve("", el.get("full-path", ""))
        if path:
            return path
    raise DecodeError("the EPUB is corrupt: META-INF/container.xml names no package document")


def _manifest(opf: ET.Element, opf_dir: str) -> dict[str, _Item]:
    items = {}
    for el in _find_all(opf, "item"):
        path = _resolve(opf_dir, el.get("href", ""))
        if el.get("id") and path:
            items[el.get("id", "")] = _Item(path, el.get("media-type", ""),
                                            frozenset(el.get("properties", "").split()))
    return items


def _spine(opf: ET.Element, manifest: dict[str, _Item]) -> list[_Item]:
    """Spine items in reading order: linear ones first, then ``linear="no"`` ones."""
    refs = _find_all(opf, "itemref")
    ordered = [r for r in refs if r.get("linear") != "no"] + [r for r in refs if r.get("linear") == "no"]
    items, seen = [], set()
    for ref in ordered:
        item = manifest.get(ref.get("idref", ""))
        if item is None:
            log.warning("EPUB spine names %r, which is not in the manifest", ref.get("idref"))
        elif item.media_type in _HTML_TYPES and item.path not in seen:
            seen.add(item.path)
            items.append(item)
    if not items:
        raise DecodeError("the EPUB is corrupt: its spine lists no (X)HTML chapters")
    return items


def _toc_titles(zf: zipfile.ZipFile, opf: ET.Element, manifest: dict[str, _Item]) -> dict[str, str]:
    """Chapter file -> its first title in the table of contents (navigation document, then NCX)."""
    titles: dict[str, str] = {}
    names = set(zf.namelist())
    for item in manifest.values():
        if "nav" in item.properties and item.path in names:
            titles.update(_nav_titles(zf, item.path))
    spines = _find_all(opf, "spine")
    ncx = manifest.get(spines[0].get("toc", "")) if spines else None
    ncx_items = [ncx] if ncx else [i for i in manifest.values() if i.media_type == _NCX_TYPE]
    for item in ncx_items:
        if item.path in names:
            for path, title in _ncx_titles(zf, item.path).items():
                titles.setdefault(path, title)
    return titles


def _nav_titles(zf: zipfile.ZipFile, path: str) -> dict[str, str]:
    soup = _soup(read_member(zf, path, LABEL, _META_LIMIT))
    navs = soup.find_all("nav")
    toc = next((n for n in navs if "toc" in str(n.get("epub:type", "")).split()), navs[0] if navs else None)
    titles: dict[str, str] = {}
    for a in toc.find_all("a", href=True) if toc is not None else []:
        target, label = _resolve(posixpath.dirname(path), str(a["href"])), " ".join(a.get_text(" ").split())
        if target and label:
            titles.setdefault(target, label)
    return titles


def _ncx_titles(zf: zipfile.ZipFile, path: str) -> dict[str, str]:
    titles: dict[str, str] = {}
    for point in _find_all(_xml(zf, path), "navPoint"):
        content = next((c for c in point if _local(c.tag) == "content"), None)
        label = next((c for c in point if _local(c.tag) == "navLabel"), None)
        text = " ".join("".join(label.itertext()).split()) if label is not None else ""
        target = _resolve(posixpath.dirname(path), content.get("src", "")) if content is not None else None
        if target and text:
            titles.setdefault(target, text)
    return titles


def _soup(raw: bytes) -> BeautifulSoup:
    from bs4 import BeautifulSoup

    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        markup = raw.decode("utf-16")
    else:
        try:
            markup = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"the EPUB has a chapter that is not UTF-8 (bad byte at {exc.start})") from None
    return BeautifulSoup(markup, "html.parser")


def _chapter(zf: zipfile.ZipFile, item: _Item, title: str | None) -> _Chapter:
    """A chapter's body text, its table-of-contents title first unless it already opens with it,
    and its sections: the title (level 0) and its ``h1``..``h6`` headings below it."""
    from longrag.retrieval.parse import heading_paths, html_headings

    if item.path not in zf.namelist():
        log.warning("EPUB spine item %r is missing from the archive", item.path)
        return _Chapter("")
    soup = _soup(read_member(zf, item.path, LABEL))
    text, heads = html_headings(soup.body or soup)
    if not text:
        return _Chapter("")
    if not title:
        opening = () if heads and heads[0][0] == 0 else ((0, ""),)  # text before a heading: no section
        return _Chapter(text, opening + heading_paths(heads))
    first_line, first_block = text.split("\n", 1)[0], text.split("\n\n", 1)[0]
    opens = _norm(title) in (_norm(first_line), _norm(first_block))
    # a heading the chapter opens with is its title (not a section of its own below the title)
    heads = [h for h in heads if h[0] > 0 or not (opens or _norm(h[2]) == _norm(title))]
    if not opens:
        text = join_blocks([title, text])
        heads = [(offset + len(title) + 2, level, head) for offset, level, head in heads]
    return _Chapter(text, heading_paths([(0, 0, title), *heads]))


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()
