"""Evidence windows: the marked span is exactly the document's text at the offsets."""

from __future__ import annotations

import html
import re

import pytest

from longrag.ui.highlight import anchor_id, window, window_html

TEXT = ("The lighthouse keeper wrote in his log every night. On the third night of the storm "
        "he wrote that the lamp had failed at 2 a.m. and that he relit it by hand. "
        "Nobody answered his letters <to the board> & he kept writing anyway.")


def _marked(fragment: str) -> str:
    inner = re.search(r"<mark[^>]*>(.*?)</mark>", fragment, re.S).group(1)
    return html.unescape(inner)


def test_window_cuts_context_on_word_boundaries() -> None:
    start = TEXT.index("On the third")
    end = TEXT.index("by hand.") + len("by hand.")
    w = window(TEXT, start, end, radius=10)
    assert w.span == TEXT[start:end]
    assert TEXT[w.start:w.end] == w.before + w.span + w.after
    assert w.start == 0 or TEXT[w.start - 1].isspace()
    assert w.end == len(TEXT) or TEXT[w.end].isspace()
    assert w.clipped_left and w.clipped_right(len(TEXT))


def test_window_at_document_edges() -> None:
    w = window(TEXT, 0, 3, radius=1000)
    assert (w.start, w.end, w.before, w.span) == (0, len(TEXT), "", "The")
    assert not w.clipped_left and not w.clipped_right(len(TEXT))


@pytest.mark.parametrize("start,end", [(-1, 3), (5, 2), (0, len(TEXT) + 1)])
def test_window_rejects_spans_outside_the_text(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        window(TEXT, start, end)


def test_window_html_marks_exact_escaped_span_with_offsets() -> None:
    start = TEXT.index("Nobody")
    end = len(TEXT)
    frag = window_html(TEXT, start, end, doc_id="abc123", radius=40)
    assert _marked(frag) == TEXT[start:end]  # "<to the board> &" survives escaping
    assert "<to the board>" not in frag
    assert f'data-start="{start}"' in frag and f'data-end="{end}"' in frag
    assert f'id="{anchor_id("abc123", start, end)}"' in frag
    assert frag.count("<mark") == 1


def test_anchor_id_is_html_safe() -> None:
    aid = anchor_id("a b/c\"d", 3, 9)
    assert re.fullmatch(r"[A-Za-z0-9-]+", aid)
    assert aid.endswith("-3-9")
