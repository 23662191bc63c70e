"""Word, PowerPoint and EPUB parsing: reading order, headings, exact offsets, pages and sections,
bad input."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from longrag.errors import DecodeError, EmptyDocumentError, FileTooLargeError
from longrag.retrieval import formats_zip
from longrag.retrieval.parse import detect_kind, locate, parse_bytes
from longrag.retrieval.segment import split_sentences


def _paragraphs(text: str) -> list[str]:
    return text.split("\n\n")


def _sentence_span(text: str, sentence: str) -> tuple[int, int]:
    """The segmenter's offsets of ``sentence`` in ``text`` (what evidence spans point at)."""
    spans = [(s.start, s.end) for s in split_sentences(text) if text[s.start : s.end] == sentence]
    assert spans, f"{sentence!r} is not a sentence of {text!r}"
    return spans[0]


# -- builders -----------------------------------------------------------------------------------
def _docx(build=None) -> bytes:
    import docx

    d = docx.Document()
    if build is None:
        d.add_heading("Annual Report", level=0)
        d.add_heading("Introduction", level=1)
        d.add_paragraph("The company grew fast. Revenue doubled in 2023.")
        t = d.add_table(rows=3, cols=3)
        for i, row in enumerate([["Year", "Revenue", "Staff"], ["2022", "5M", "40"], ["2023", "10M", "50"]]):
            for j, value in enumerate(row):
                t.cell(i, j).text = value
        d.add_heading("Outlook", level=2)
        p = d.add_paragraph("Growth will ")
        p.add_run("continue").bold = True
        p.add_run(" next year.")
    else:
        build(d)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _pptx(build=None) -> bytes:
    import pptx
    from pptx.util import Inches

    prs = pptx.Presentation()
    if build is None:
        s1 = prs.slides.add_slide(prs.slide_layouts[1])  # title and content
        s1.shapes.title.text = "Quarterly results"
        body = s1.placeholders[1].text_frame
        body.text = "Revenue grew by a third."
        body.add_paragraph().text = "Costs fell."
        s1.notes_slide.notes_text_frame.text = "Mention the new Lyon office."
        prs.slides.add_slide(prs.slide_layouts[6])  # blank: no text, skipped
        s3 = prs.slides.add_slide(prs.slide_layouts[5])  # title only
        s3.shapes.title.text = "Headcount"
        box = s3.shapes.add_textbox(Inches(1), Inches(2), Inches(4), Inches(1))
        box.text_frame.text = "Hiring resumes in May."
        table = s3.shapes.add_table(2, 2, Inches(1), Inches(4), Inches(4), Inches(1)).table
        for (r, c), value in {(0, 0): "Team", (0, 1): "People", (1, 0): "Sales", (1, 1): "12"}.items():
            table.cell(r, c).text = value
    else:
        build(prs)
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


_CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""

_OPF = """<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Test Book</dc:title></metadata>
  <manifest>
    <item id="notes" href="text/notes.xhtml" media-type="application/xhtml+xml"/>
    <item id="c2" href="text/chapter%202.xhtml" media-type="application/xhtml+xml"/>
    <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>
    <item id="c1" href="text/one.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
  </manifest>
  <spine>
    <itemref idref="notes" linear="no"/>
    <itemref idref="c1"/>
    <itemref idref="c2"/>
  </spine>
</package>"""

_NAV = """<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Contents</title></head><body>
<nav epub:type="toc"><ol>
  <li><a href="text/one.xhtml">Chapter One</a></li>
  <li><a href="text/chapter%202.xhtml#start">The Second Chapter</a></li>
</ol></nav></body></html>"""


def _xhtml(body: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Test Book</title>'
            f'<style>p {{ margin: 0 }}</style></head>\n<body>\n{body}\n</body></html>')


def _epub_members(**extra: str | bytes | None) -> dict[str, str | bytes]:
    """EPUB members in archive order: the second chapter is stored before the first."""
    members: dict[str, str | bytes | None] = {
        "mimetype": "application/epub+zip",
        "META-INF/container.xml": _CONTAINER,
        "OEBPS/content.opf": _OPF,
        "OEBPS/text/chapter 2.xhtml": _xhtml('<p id="start">The ship left port at dawn.</p>\n'
                                             "<p>Nobody waved.</p>"),
        "OEBPS/nav.xhtml": _NAV,
        "OEBPS/text/one.xhtml": _xhtml("<h1>Chapter One</h1>\n<p>Call me Ishmael.</p>\n"
                                       "<script>var hidden = 1;</script>\n<p>Some years ago I went to sea.</p>"),
        "OEBPS/text/notes.xhtml": _xhtml("<p>A note read last.</p>"),
        "OEBPS/style.css": "p { color: black }",
        **extra,
    }
    return {k: v for k, v in members.items() if v is not None}


def _zip(members: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            method = zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED
            zf.writestr(name, content, compress_type=method)
    return buf.getvalue()


def _epub(**extra: str | bytes | None) -> bytes:
    return _zip(_epub_members(**extra))


# -- Word ---------------------------------------------------------------------------------------
def test_docx_paragraphs_headings_and_tables_in_order():
    doc = parse_bytes(_docx(), "report.docx")
    assert doc.kind == "docx"
    assert _paragraphs(doc.text) == [
        "Annual Report",
        "Introduction",
        "The company grew fast. Revenue doubled in 2023.",
        "Year | Revenue | Staff",
        "2022 | 5M | 40",
        "2023 | 10M | 50",
        "Outlook",
        "Growth will continue next year.",
    ]
    start, end = _sentence_span(doc.text, "Revenue doubled in 2023.")
    assert doc.text[start:end] == "Revenue doubled in 2023."


def test_docx_tracked_changes_and_content_controls():
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    def build(d):
        d.add_paragraph("Kept.")
        d.element.body.insert(1, parse_xml(
            f'<w:p {nsdecls("w")}><w:r><w:t xml:space="preserve">The fee is </w:t></w:r>'
            '<w:del w:id="1" w:author="a"><w:r><w:delText>ten</w:delText></w:r></w:del>'
            '<w:ins w:id="2" w:author="a"><w:r><w:t>twelve</w:t></w:r></w:ins>'
            '<w:r><w:t xml:space="preserve"> euros.</w:t></w:r></w:p>'))
        d.element.body.insert(2, parse_xml(
            f'<w:sdt {nsdecls("w")}><w:sdtContent><w:p><w:r><w:t>Inside a content control.</w:t></w:r></w:p>'
            '</w:sdtContent></w:sdt>'))

    assert _paragraphs(parse_bytes(_docx(build), "fee.docx").text) == [
        "Kept.", "The fee is twelve euros.", "Inside a content control."]


def test_docx_vertically_merged_cell_keeps_columns():
    def build(d):
        t = d.add_table(rows=2, cols=2)
        t.cell(0, 0).text, t.cell(0, 1).text, t.cell(1, 1).text = "Region", "North", "South"
        t.cell(0, 0).merge(t.cell(1, 0))

    assert _paragraphs(parse_bytes(_docx(build), "t.docx").text) == ["Region | North", "| South"]


# -- PowerPoint ---------------------------------------------------------------------------------
def test_pptx_one_section_per_slide_with_title_text_and_notes():
    doc = parse_bytes(_pptx(), "deck.pptx")
    assert doc.kind == "pptx"
    assert _paragraphs(doc.text) == [
        "Slide 1: Quarterly results",
        "Revenue grew by a third.",
        "Costs fell.",
        "Notes: Mention the new Lyon office.",
        "Slide 3: Headcount",
        "Hiring resumes in May.",
        "Team | People",
        "Sales | 12",
    ]
    start, end = _sentence_span(doc.text, "Hiring resumes in May.")
    assert doc.text[start:end] == "Hiring resumes in May."


def test_pptx_line_breaks_and_untitled_slides():
    from pptx.util import Inches

    def build(prs):
        box = prs.slides.add_slide(prs.slide_layouts[6]).shapes.add_textbox(0, 0, Inches(3), Inches(1))
        box.text_frame.paragraphs[0].text = "first line\vsecond line"

    assert parse_bytes(_pptx(build), "d.pptx").text == "Slide 1\n\nfirst line\nsecond line"


# -- EPUB ---------------------------------------------------------------------------------------
def test_epub_chapters_follow_the_spine_with_titles():
    doc = parse_bytes(_epub(), "book.epub")
    assert doc.kind == "epub"
    text = doc.text
    order = ["Chapter One", "Call me Ishmael.", "Some years ago I went to sea.",
             "The Second Chapter", "The ship left port at dawn.", "Nobody waved.", "A note read last."]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    assert text.count("Chapter One") == 1  # the chapter's own <h1> is its title
    assert "The Second Chapter" in _paragraphs(text)  # the TOC title, as a paragraph of its own
    assert "var hidden" not in text and "Test Book" not in text and "color" not in text
    start, end = _sentence_span(text, "The ship left port at dawn.")
    assert text[start:end] == "The ship left port at dawn."


def _epub2_files() -> dict[str, str | None]:
    """The default book as EPUB 2: an NCX table of contents (chapter 2 titled "Departure") instead
    of the EPUB 3 nav document."""
    ncx = """<?xml version="1.0"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1">
      <navMap><navPoint id="p1" playOrder="1"><navLabel><text>Departure</text></navLabel>
      <content src="text/chapter%202.xhtml"/></navPoint></navMap></ncx>"""
    opf = (_OPF.replace('version="3.0"', 'version="2.0"').replace(' properties="nav"', "")
           .replace("<spine>", '<spine toc="ncx">')
           .replace("</manifest>", '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/></manifest>'))
    return {"OEBPS/content.opf": opf, "OEBPS/toc.ncx": ncx, "OEBPS/nav.xhtml": None}


def test_epub2_ncx_titles():
    text = parse_bytes(_epub(**_epub2_files()), "old.epub").text
    assert text.index("Call me Ishmael.") < text.index("Departure") < text.index("The ship left port")


def test_epub_with_obfuscated_fonts_only_is_read():
    enc = """<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container"
      xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>
      <enc:EncryptionMethod Algorithm="http://www.idpf.org/2008/embedding"/>
      <enc:CipherData><enc:CipherReference URI="OEBPS/font.otf"/></enc:CipherData>
      </enc:EncryptedData></encryption>"""
    assert "Call me Ishmael." in parse_bytes(_epub(**{"META-INF/encryption.xml": enc}), "f.epub").text


def test_zip_documents_without_a_suffix_are_sniffed():
    assert detect_kind(None, _docx()) == "docx"
    assert detect_kind("upload", _pptx()) == "pptx"
    assert detect_kind(None, _epub()) == "epub"
    assert detect_kind("report.docx", b"%PDF-1.4") == "pdf"


# -- pages and sections -------------------------------------------------------------------------
def _at(doc, needle: str) -> tuple[int | None, str | None]:
    """The (page, section) that :func:`locate` gives for where ``needle`` starts in the text."""
    art = doc.artifacts()
    return locate(art.get("pages"), art.get("sections"), doc.text.index(needle))


def _localized_headings(d) -> None:
    """Heading styles with localized names, known by their outline level; a style based on one;
    a paragraph made a heading (and one made body text) by direct formatting."""
    from docx.enum.style import WD_STYLE_TYPE
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    def outline(el, level: int) -> None:
        lvl = OxmlElement("w:outlineLvl")
        lvl.set(qn("w:val"), str(level))
        el.get_or_add_pPr().append(lvl)

    h1 = d.styles.add_style("Überschrift 1", WD_STYLE_TYPE.PARAGRAPH)
    outline(h1.element, 0)
    h2 = d.styles.add_style("Überschrift 2", WD_STYLE_TYPE.PARAGRAPH)
    outline(h2.element, 1)
    chapter = d.styles.add_style("Kapitel", WD_STYLE_TYPE.PARAGRAPH)
    chapter.base_style = h2
    d.add_paragraph("Einleitung", style=h1)
    d.add_paragraph("Der Umsatz stieg.")
    d.add_paragraph("Märkte", style=h2)
    d.add_paragraph("Europa wuchs am stärksten.")
    d.add_paragraph("Ausblick  Europa", style=chapter)
    outline(d.add_paragraph("Direkt formatiert")._p, 2)
    d.add_paragraph("Ein Absatz darunter.")
    outline(d.add_paragraph("Kein Titel", style="Heading 1")._p, 9)
    d.add_paragraph("   ", style=h1)
    cell = d.add_table(rows=1, cols=2).cell(0, 0)
    cell.paragraphs[0].text, cell.paragraphs[0].style = "Zelle", h1
    d.add_paragraph("Schluss.")


def test_docx_headings_give_sections_and_the_text_is_unchanged():
    doc = parse_bytes(_docx(), "report.docx")
    assert doc.text == ("Annual Report\n\nIntroduction\n\nThe company grew fast. Revenue doubled in 2023.\n\n"
                        "Year | Revenue | Staff\n\n2022 | 5M | 40\n\n2023 | 10M | 50\n\nOutlook\n\n"
                        "Growth will continue next year.")
    assert doc.pages is None
    assert [(doc.text[o : o + 5], p) for o, p in doc.sections] == [
        ("Annua", "Annual Report"), ("Intro", "Annual Report > Introduction"),
        ("Outlo", "Annual Report > Introduction > Outlook")]
    assert _at(doc, "Revenue doubled") == (None, "Annual Report > Introduction")
    assert _at(doc, "2022 | 5M") == (None, "Annual Report > Introduction")
    assert _at(doc, "Growth will") == (None, "Annual Report > Introduction > Outlook")


def test_docx_localized_heading_styles_by_outline_level():
    doc = parse_bytes(_docx(_localized_headings), "bericht.docx")
    assert doc.text == ("Einleitung\n\nDer Umsatz stieg.\n\nMärkte\n\nEuropa wuchs am stärksten.\n\n"
                        "Ausblick Europa\n\nDirekt formatiert\n\nEin Absatz darunter.\n\nKein Titel\n\n"
                        "Zelle |\n\nSchluss.")
    assert [p for _, p in doc.sections] == [
        "Einleitung", "Einleitung > Märkte", "Einleitung > Ausblick Europa",
        "Einleitung > Ausblick Europa > Direkt formatiert"]
    assert _at(doc, "Der Umsatz") == (None, "Einleitung")
    assert _at(doc, "Europa wuchs") == (None, "Einleitung > Märkte")
    assert _at(doc, "Ein Absatz") == (None, "Einleitung > Ausblick Europa > Direkt formatiert")
    assert _at(doc, "Schluss.") == _at(doc, "Kein Titel") == _at(doc, "Ein Absatz")  # body text, table cell


def test_docx_without_headings_has_no_sections():
    doc = parse_bytes(_docx(lambda d: d.add_paragraph("Just a note.")), "note.docx")
    assert doc.text == "Just a note." and doc.sections is None and "sections" not in doc.artifacts()


def test_pptx_each_slide_is_a_page_and_a_section():
    doc = parse_bytes(_pptx(), "deck.pptx")
    slide3 = doc.text.index("Slide 3: Headcount")
    assert doc.pages == (0, slide3, slide3)  # the blank slide 2 starts where slide 3 does
    assert doc.sections == ((0, "Slide 1: Quarterly results"), (slide3, "Slide 3: Headcount"))
    assert _at(doc, "Costs fell.") == (1, "Slide 1: Quarterly results")
    assert _at(doc, "Notes: Mention") == (1, "Slide 1: Quarterly results")
    assert _at(doc, "Hiring resumes") == (3, "Slide 3: Headcount")
    assert _at(doc, "Sales | 12") == (3, "Slide 3: Headcount")


def test_pptx_pages_around_blank_slides_and_slide_lines_in_the_text():
    from pptx.util import Inches

    def build(prs):
        prs.slides.add_slide(prs.slide_layouts[6])  # blank
        s2 = prs.slides.add_slide(prs.slide_layouts[5])
        s2.shapes.title.text = "Only"
        s2.shapes.add_textbox(0, Inches(2), Inches(3), Inches(1)).text_frame.text = "Slide 9"  # not a slide
        prs.slides.add_slide(prs.slide_layouts[6])  # blank, last

    doc = parse_bytes(_pptx(build), "d.pptx")
    assert doc.text == "Slide 2: Only\n\nSlide 9"
    assert doc.pages == (0, 0, len(doc.text))
    assert doc.sections == ((0, "Slide 2: Only"),)
    assert _at(doc, "Slide 2") == _at(doc, "Slide 9") == (2, "Slide 2: Only")


_HEADED_CHAPTERS = {
    "OEBPS/text/one.xhtml": _xhtml("<h1>Chapter One</h1>\n<p>Call me Ishmael.</p>\n<h2>Loomings</h2>\n"
                                   "<p>Some years ago I went to sea.</p>"),
    "OEBPS/text/chapter 2.xhtml": _xhtml('<p id="start">The ship left port at dawn.</p>\n<h2>At Sea</h2>\n'
                                         "<p>Nobody waved.</p>\n<h3>Storm</h3>\n<p>The mast broke.</p>"),
}


def test_epub_chapter_titles_and_headings_give_sections():
    doc = parse_bytes(_epub(**_HEADED_CHAPTERS), "book.epub")
    assert doc.text == ("Chapter One\n\nCall me Ishmael.\n\nLoomings\n\nSome years ago I went to sea.\n\n"
                        "The Second Chapter\n\nThe ship left port at dawn.\n\nAt Sea\n\nNobody waved.\n\n"
                        "Storm\n\nThe mast broke.\n\nA note read last.")  # as before sections were kept
    assert doc.pages is None
    assert [(doc.text[o : o + 5], p) for o, p in doc.sections] == [
        ("Chapt", "Chapter One"), ("Loomi", "Chapter One > Loomings"),
        ("The S", "The Second Chapter"), ("At Se", "The Second Chapter > At Sea"),
        ("Storm", "The Second Chapter > At Sea > Storm"),
        ("A not", ""),  # the untitled notes are no part of the chapter before them
    ]
    assert _at(doc, "Call me Ishmael.") == (None, "Chapter One")  # its own <h1> is the title, once
    assert _at(doc, "Some years ago") == (None, "Chapter One > Loomings")
    assert _at(doc, "The ship left") == (None, "The Second Chapter")
    assert _at(doc, "Nobody waved.") == (None, "The Second Chapter > At Sea")
    assert _at(doc, "The mast broke.") == (None, "The Second Chapter > At Sea > Storm")
    assert _at(doc, "A note read last.") == (None, None)


def test_epub_sections_of_the_default_book_and_of_ncx_titles():
    doc = parse_bytes(_epub(), "book.epub")
    assert doc.text == ("Chapter One\n\nCall me Ishmael.\n\nSome years ago I went to sea.\n\nThe Second Chapter\n\n"
                        "The ship left port at dawn.\n\nNobody waved.\n\nA note read last.")
    assert [p for _, p in doc.sections] == ["Chapter One", "The Second Chapter", ""]
    old = parse_bytes(_epub(**_epub2_files(), **_HEADED_CHAPTERS), "old.epub")
    assert old.text == ("Chapter One\n\nCall me Ishmael.\n\nLoomings\n\nSome years ago I went to sea.\n\n"
                        "Departure\n\nThe ship left port at dawn.\n\nAt Sea\n\nNobody waved.\n\nStorm\n\n"
                        "The mast broke.\n\nA note read last.")
    assert _at(old, "Call me Ishmael.") == (None, "Chapter One")  # no TOC title: its <h1>
    assert _at(old, "Some years ago") == (None, "Chapter One > Loomings")
    assert _at(old, "The ship left") == (None, "Departure")
    assert _at(old, "The mast broke.") == (None, "Departure > At Sea > Storm")
    assert _at(old, "A note read last.") == (None, None)


def test_epub_headings_in_markup_empty_ones_and_a_title_that_is_not_the_opening():
    chapters = {
        "OEBPS/text/one.xhtml": _xhtml('<div><h1><span>Chapter</span> <em>One</em></h1><h2></h2>'
                                       "<p>Call <b>me</b> Ishmael.</p><h3>A<br/>broken heading</h3><p>tail</p></div>"),
        "OEBPS/text/chapter 2.xhtml": _xhtml("<h2> </h2><section><h1>The Second Chapter</h1><p>Ahoy.</p></section>"),
        "OEBPS/text/notes.xhtml": _xhtml("<h2>Notes</h2><p>A note read last.</p>"),
    }
    doc = parse_bytes(_epub(**chapters), "m.epub")
    assert doc.text == ("Chapter One\n\nChapter\n\nOne\nCall\nme\nIshmael.\nA\nbroken heading\ntail\n\n"
                        "The Second Chapter\nAhoy.\n\nNotes\nA note read last.")  # as before sections were kept
    assert [p for _, p in doc.sections] == [
        "Chapter One",  # the TOC title; the chapter's own <h1> says the same and is not repeated
        "Chapter One > A broken heading",  # a heading's lines joined; the empty <h2> is none
        "The Second Chapter", "Notes"]  # an untitled chapter's own heading
    assert _at(doc, "Ishmael.") == (None, "Chapter One")
    assert _at(doc, "tail") == (None, "Chapter One > A broken heading")
    assert _at(doc, "A note") == (None, "Notes")


def test_ingested_office_and_epub_evidence_is_located():
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus

    corpus = Corpus(settings=get_settings())
    for data, name, needle, where in (
        (_docx(), "report.docx", "Revenue doubled", (None, "Annual Report > Introduction")),
        (_pptx(), "deck.pptx", "Hiring resumes", (3, "Slide 3: Headcount")),
        (_epub(**_HEADED_CHAPTERS), "book.epub", "Nobody waved.", (None, "The Second Chapter > At Sea")),
    ):
        res = corpus.ingest_bytes(data, name)
        text = corpus.text(res.doc_id)
        assert text == parse_bytes(data, name).text
        assert corpus.locate(res.doc_id, text.index(needle)) == where, name


def test_block_starts_and_page_starts():
    assert formats_zip.join_blocks(["a", "", "bc", "d"]) == "a\n\nbc\n\nd"
    assert formats_zip.block_starts(["a", "", "bc", "d"]) == [0, None, 3, 7]
    assert formats_zip.block_starts(["", "a"]) == [None, 0]
    assert formats_zip.fill_starts([None, 0, None, 3, None], 4) == [0, 0, 3, 3, 4]


# -- bad input ----------------------------------------------------------------------------------
_BUILDERS = {"docx": _docx, "pptx": _pptx, "epub": _epub}


@pytest.mark.parametrize("kind", sorted(_BUILDERS))
def test_corrupt_and_truncated_archives_are_decode_errors(kind):
    good = _BUILDERS[kind]()
    for data in (b"this is not a zip archive", good[: len(good) // 2], b"PK\x03\x04" + b"\x00" * 200):
        with pytest.raises(DecodeError, match="not a readable ZIP"):
            parse_bytes(data, f"bad.{kind}")


def _lie_about_size(data: bytes, member: str, size: int) -> bytes:
    """``data`` with ``member``'s uncompressed size in the central directory set to ``size``."""
    raw = bytearray(data)
    at = raw.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + name_len].decode() == member:
            struct.pack_into("<I", raw, at + 24, size)
            return bytes(raw)
        at = raw.index(b"PK\x01\x02", at + 4)


@pytest.mark.parametrize("kind,member", [("docx", "word/document.xml"), ("epub", "OEBPS/text/one.xhtml")])
def test_a_member_larger_than_declared_is_not_inflated(kind, member):
    with pytest.raises(DecodeError, match="corrupt|could not read"):
        parse_bytes(_lie_about_size(_BUILDERS[kind](), member, 64), f"lie.{kind}")


@pytest.mark.parametrize("kind,member", [("docx", "word/document.xml"), ("pptx", "ppt/slides/slide1.xml"),
                                         ("epub", "OEBPS/text/one.xhtml")])
def test_zip_bomb_is_refused_before_unpacking(kind, member):
    with zipfile.ZipFile(io.BytesIO(_BUILDERS[kind]())) as zf:
        members: dict[str, str | bytes] = {i.filename: zf.read(i) for i in zf.infolist()}
    members[member] = b"\0" * (16 * 1024 * 1024)  # ~16 KB deflated: ratio ~1000
    with pytest.raises(DecodeError, match="zip bomb"):
        parse_bytes(_zip(members), f"bomb.{kind}")


def test_total_unpacked_size_is_limited(monkeypatch):
    import os

    monkeypatch.setattr(formats_zip, "MAX_UNZIPPED_BYTES", 256 * 1024)
    data = _epub(**{f"OEBPS/img{i}.bin": os.urandom(100 * 1024) for i in range(3)})
    with pytest.raises(FileTooLargeError, match="unpacks to"):
        parse_bytes(data, "big.epub")


def test_legacy_or_password_protected_office_file():
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 1024
    with pytest.raises(DecodeError, match="password-protected"):
        parse_bytes(ole, "secret.docx")


def test_wrong_office_type_is_a_decode_error():
    with pytest.raises(DecodeError, match="Word"):
        parse_bytes(_pptx(), "deck.docx")
    with pytest.raises(DecodeError, match="container.xml"):
        parse_bytes(_docx(), "report.epub")


@pytest.mark.parametrize("extra", [
    {"META-INF/rights.xml": "<rights/>"},
    {"META-INF/encryption.xml": """<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container"
       xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>
       <enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
       <enc:CipherData><enc:CipherReference URI="OEBPS/text/one.xhtml"/></enc:CipherData>
       </enc:EncryptedData></encryption>"""},
    {"META-INF/encryption.xml": "<encryption><broken"},
])
def test_drm_protected_epub_is_refused(extra):
    with pytest.raises(DecodeError, match="DRM-protected EPUBs are not supported"):
        parse_bytes(_epub(**extra), "drm.epub")


@pytest.mark.parametrize("data,name,msg", [
    (_docx(lambda d: d.add_paragraph("   ")), "empty.docx", "Word document has no text"),
    (_pptx(lambda p: p.slides.add_slide(p.slide_layouts[6])), "empty.pptx", "presentation has no text"),
    (_epub(**{"OEBPS/text/one.xhtml": _xhtml('<img src="a.png"/>'), "OEBPS/text/chapter 2.xhtml": _xhtml(""),
              "OEBPS/text/notes.xhtml": _xhtml("<p> </p>")}), "empty.epub", "EPUB has no text"),
])
def test_documents_without_text_are_empty_errors(data, name, msg):
    with pytest.raises(EmptyDocumentError, match=msg):
        parse_bytes(data, name)


def test_bad_upload_stores_nothing():
    from longrag.config import get_settings
    from longrag.services.corpus import Corpus

    def no_model():
        raise AssertionError("a bad upload must fail before any model is loaded")

    corpus = Corpus(settings=get_settings(), embedder_factory=no_model, vector_builders={})
    for data, name in ((b"junk", "a.docx"), (_epub(**{"META-INF/rights.xml": "<r/>"}), "b.epub")):
        with pytest.raises(DecodeError):
            corpus.ingest_bytes(data, name)
    assert corpus.list() == []
