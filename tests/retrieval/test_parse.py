import io

import pytest

from longrag.errors import DecodeError, EmptyDocumentError, UnsupportedFileTypeError
from longrag.retrieval.parse import parse_bytes


def test_utf8_text_is_unchanged():
    raw = "Café — naïve ✓\r\nline two\n".encode()
    doc = parse_bytes(raw, "a.txt")
    assert doc.text == raw.decode("utf-8") and doc.kind == "text"


def test_markdown_is_kept_verbatim():
    raw = b"# Title\n\nSome *text*."
    assert parse_bytes(raw, "x.md").text == raw.decode()


def test_html_drops_scripts_and_tags():
    raw = b"<html><head><style>p{}</style><script>var x=1;</script></head><body><h1>Hello</h1><p>World is <b>big</b>.</p></body></html>"
    text = parse_bytes(raw, "page.html").text
    assert "Hello" in text and "World is" in text and "big" in text
    assert "var x" not in text and "<" not in text


def _pdf_with_text(text: str | None) -> bytes:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    w = PdfWriter()
    page = w.add_blank_page(width=300, height=200)
    if text is not None:
        font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                                 NameObject("/BaseFont"): NameObject("/Helvetica")})
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): w._add_object(font)})})
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = w._add_object(stream)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def test_pdf_text_layer_is_extracted():
    doc = parse_bytes(_pdf_with_text("The treaty was signed in 1648."), "t.pdf")
    assert doc.kind == "pdf" and "treaty was signed in 1648" in doc.text


def test_pdf_without_text_layer_is_a_clear_error():
    with pytest.raises(EmptyDocumentError, match="no text layer"):
        parse_bytes(_pdf_with_text(None), "scan.pdf")


@pytest.mark.parametrize(
    "data,name,exc,msg",
    [
        (b"", "a.txt", EmptyDocumentError, "0 bytes"),
        (b"   \n\t ", "a.txt", EmptyDocumentError, "whitespace"),
        (bytes(range(256)) * 8, "blob.txt", DecodeError, "UTF-8"),
        ("caf\u00e9 latin-1".encode("latin-1"), "l1.txt", DecodeError, "UTF-8"),
        (b"\x00\x01\x02abc\x00\x00" * 50, "bin.txt", DecodeError, "binary"),
        (b"hello", "sheet.xlsx", UnsupportedFileTypeError, ".xlsx"),
        (b"%PDF-1.4 garbage that is not a pdf", "bad.pdf", DecodeError, "PDF"),
    ],
)
def test_bad_input_gets_clear_errors(data, name, exc, msg):
    with pytest.raises(exc, match=msg):
        parse_bytes(data, name)


def test_section_at_gives_the_heading_path_at_each_offset():
    from longrag.retrieval.parse import section_at

    sections = ((0, "Book"), (10, "Book > One"), (30, ""))
    assert section_at(sections, [0, 9, 10, 29, 30, 99]) == ["Book", "Book", "Book > One", "Book > One", "", ""]
    assert section_at(((5, "A"),), [0, 5]) == ["", "A"]
    assert section_at(None, [0, 1]) == ["", ""]
