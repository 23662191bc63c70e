"""The longrag document-QA app: ``longrag ui`` (or ``streamlit run longrag/ui/app.py``).

Pages: Documents (upload, ingestion progress, list, delete), Ask (streamed answer, evidence
highlighted in its surrounding text, timings), Reader (a document at a character position)
and Batch (a JSONL of questions in, JSONL of results out). Everything goes through the REST
API at ``LONGRAG_API_URL`` with the key ``LONGRAG_API_KEY``.
"""

from __future__ import annotations

import streamlit as st

from longrag.ui.client import APIError
from longrag.ui.common import VIEWS, api_url, client


st.set_page_config(page_title="longrag · document QA", page_icon=":material/menu_book:", layout="wide")

PAGES = {
    "documents": st.Page(VIEWS / "documents.py", title="Documents", icon=":material/description:",
                         url_path="documents", default=True),
    "ask": st.Page(VIEWS / "ask.py", title="Ask", icon=":material/question_answer:", url_path="ask"),
    "reader": st.Page(VIEWS / "reader.py", title="Reader", icon=":material/chrome_reader_mode:",
                      url_path="reader"),
    "batch": st.Page(VIEWS / "batch.py", title="Batch", icon=":material/playlist_play:", url_path="batch"),
}
page = st.navigation(list(PAGES.values()))

with st.sidebar:
    st.markdown("### longrag")
    st.caption("Questions over long documents, answered with exact evidence.")
    with st.expander("API", expanded=False):
        st.session_state.setdefault("api_url", api_url())
        st.text_input("API URL", key="api_url")
        try:
            health = client().health()
            ok = str(health.get("status", "ok")).lower() in {"ok", "healthy", "pass", "true"}
            st.caption(f"{':green[●] connected' if ok else ':orange[●] degraded'} · {api_url()}")
        except APIError as exc:
            st.caption(f":red[●] not reachable: {exc}")

page.run()
