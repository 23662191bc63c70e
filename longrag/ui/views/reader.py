"""Reader: a document opened at a character position (``?doc=ID&start=S&end=E``)."""

from __future__ import annotations

import streamlit as st

from longrag.ui.client import APIError
from longrag.ui.common import doc_label, documents_or_error, show_error, text_of
from longrag.ui.highlight import window_html


def _int_param(name: str, default: int) -> int:
    try:
        return int(st.query_params.get(name, default))
    except (TypeError, ValueError):
        return default


st.title("Reader")
docs = documents_or_error() or []
if not docs:
    st.info("No documents yet.", icon=":material/info:")
    st.stop()

ids = [d.doc_id for d in docs]
wanted = st.query_params.get("doc")
doc_id = st.selectbox("Document", ids, index=ids.index(wanted) if wanted in ids else 0,
                      format_func=lambda i: doc_label(next(d for d in docs if d.doc_id == i)))
if wanted and wanted not in ids:
    st.warning(f"Document `{wanted}` is not stored (deleted?).")
if doc_id != wanted:
    st.query_params.clear()
    st.query_params["doc"] = doc_id

try:
    text = text_of(doc_id)
except APIError as exc:
    show_error(exc)
    st.stop()

n = len(text)
same_doc = doc_id == wanted
start0 = min(max(_int_param("start", 0), 0), n) if same_doc else 0
end0 = min(max(_int_param("end", start0), start0), n) if same_doc else 0
c1, c2, c3 = st.columns([2, 2, 3])
start = int(c1.number_input("Start (char)", 0, n, start0, step=1))
end = int(c2.number_input("End (char)", start, n, max(end0, start), step=1))
radius = c3.slider("Context (chars each side)", 200, 20000, 2000, step=200)
st.caption(f"Characters {start:,}–{end:,} of {n:,} · the offsets index the document's parsed text.")
st.html(window_html(text, start, end, doc_id=doc_id, radius=radius))
