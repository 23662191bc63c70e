"""Evidence shown in place: a window of the document around a span, the span in ``<mark>``.

Pure functions on strings (no Streamlit), so they are easy to test. Offsets are character
offsets into the document's parsed text, exactly as the API returns them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Window:
    """A slice of a document around one span."""

    start: int  # first char of the window
    end: int  # one past the last char of the window
    before: str
    span: str
    after: str

    @property
    def clipped_left(self) -> bool:
        return self.start > 0

    def clipped_right(self, doc_len: int) -> bool:
        return self.end < doc_len


def anchor_id(doc_id: str, start: int, end: int) -> str:
    """A stable HTML id for one span (used as the link target)."""
    safe = "".join(c if c.isalnum() else "-" for c in doc_id)
    return f"ev-{safe}-{start}-{end}"


def _snap_left(text: str, pos: int, limit: int) -> int:
    """Move ``pos`` left to a word boundary, but no further than ``limit`` chars."""
    floor = max(0, pos - limit)
    i = pos
    while i > floor and not text[i - 1].isspace():
        i -= 1
    return i if i > floor else pos


def _snap_right(text: str, pos: int, limit: int) -> int:
    ceil = min(len(text), pos + limit)
    i = pos
    while i < ceil and not text[i].isspace():
        i += 1
    return i if i < ceil or i == len(text) else pos


def window(text: str, start: int, end: int, radius: int = 300) -> Window:
    """Cut ``radius`` characters of context on each side of ``text[start:end]``.

    The window edges are moved to word boundaries (at most 30 characters) so no word is cut.

    Raises:
        ValueError: If the span is not inside the text.
    """
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span {start}:{end} is outside a text of {len(text)} characters")
    lo = max(0, start - radius)
    hi = min(len(text), end + radius)
    if lo > 0:
        lo = _snap_left(text, lo, 30)
    if hi < len(text):
        hi = _snap_right(text, hi, 30)
    return Window(lo, hi, text[lo:start], text[start:end], text[end:hi])


def _esc(s: str) -> str:
    return html.escape(s, quote=False)


def window_html(text: str, start: int, end: int, *, doc_id: str, radius: int = 300) -> str:
    """HTML for one evidence span in its surrounding text, the span wrapped in ``<mark>``.

    The ``<mark>``'s text content is exactly ``text[start:end]`` (whitespace kept with
    ``pre-wrap``); it carries
    the offsets as ``data-start``/``data-end`` and the id from :func:`anchor_id`.
    """
    w = window(text, start, end, radius)
    left = "… " if w.clipped_left else ""
    right = " …" if w.clipped_right(len(text)) else ""
    aid = anchor_id(doc_id, start, end)
    return (
        f'<div class="lr-window" style="line-height:1.6;white-space:pre-wrap">'
        f'<span style="opacity:.75">{left}{_esc(w.before)}</span>'
        f'<mark id="{aid}" data-doc="{html.escape(doc_id)}" data-start="{start}" data-end="{end}" '
        f'style="background:#ffe066;padding:0 2px;border-radius:3px">{_esc(w.span)}</mark>'
        f'<span style="opacity:.75">{_esc(w.after)}{right}</span></div>'
    )
