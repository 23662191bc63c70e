"""Documents: upload files (watching each ingestion job), paste text, list and delete."""

from __future__ import annotations

import time

import streamlit as st

from longrag.ui.client import APIError, Submitted
from longrag.ui.common import FILE_TYPES, VIEWS, client, documents_or_error, show_error, when


def _upload_section() -> None:
    st.subheader("Add documents")
    files_tab, text_tab = st.tabs(["Upload files", "Paste text"])
    with files_tab:
        with st.form("upload", clear_on_submit=True, border=False):
            files = st.file_uploader("Files (.txt .md .html .pdf .docx .pptx .epub)", type=FILE_TYPES, accept_multiple_files=True)
            go = st.form_submit_button("Upload and index", type="primary", icon=":material/upload:")
        if go and files:
            for f in files:
                try:
                    _pending().append((f.name, client().upload(f.name, f.getvalue(), f.type)))
                except APIError as exc:
                    st.error(f"**{f.name}**: {exc}", icon=":material/error:")
        elif go:
            st.warning("Choose at least one file first.")
    with text_tab:
        with st.form("paste", clear_on_submit=True, border=False):
            title = st.text_input("Title")
            text = st.text_area("Text", height=180)
            go_text = st.form_submit_button("Index text", icon=":material/upload:")
        if go_text:
            if not text.strip():
                st.warning("The text is empty.")
            else:
                try:
                    sub = client().add_text(text, title or None)
                except APIError as exc:
                    show_error(exc)
                else:
                    _pending().append((title or "pasted text", sub))
    _watch_pending()


def _pending() -> list[tuple[str, Submitted]]:
    """Ingestion jobs this session started and has not seen finish (kept across page changes)."""
    return st.session_state.setdefault("pending_ingests", [])


def _watch_pending(interval: float = 0.4) -> None:
    """Draw one progress bar per pending ingestion job and poll them all until each ends."""
    pending = _pending()
    if not pending:
        return
    bars = {}
    for name, sub in pending:
        bar_col, button_col = st.columns([6, 1], vertical_alignment="center")
        bars[sub.job_id] = bar_col.progress(0.0, text=f"{name}: queued")
        button_col.button("Cancel", key=f"cancel-{sub.job_id}", on_click=_cancel, args=(name, sub.job_id),
                          icon=":material/cancel:")
    while pending:
        for item in list(pending):
            name, sub = item
            try:
                job = client().job(sub.job_id)
            except APIError as exc:
                pending.remove(item)
                st.error(f"**{name}**: {exc}", icon=":material/error:")
                continue
            stage = "indexed" if job.state == "succeeded" else (job.stage or job.state)
            if job.detail and not job.done:
                stage = f"{stage}, {job.detail}"
            bars[sub.job_id].progress(min(max(job.progress, 0.0), 1.0), text=f"{name}: {stage} ({job.progress:.0%})")
            if job.done:
                pending.remove(item)
                if job.state == "succeeded":
                    st.success(f"**{name}** is ready · `{job.doc_id or sub.doc_id}`", icon=":material/check_circle:")
                elif job.state == "cancelled":
                    st.warning(f"**{name}**: cancelled, nothing stored", icon=":material/cancel:")
                else:
                    st.error(f"**{name}** failed: {job.error or 'unknown error'}", icon=":material/error:")
        if pending:
            time.sleep(interval)


def _cancel(name: str, job_id: str) -> None:
    try:
        client().cancel(job_id)
    except APIError as exc:  # it ended meanwhile: the poll shows how
        st.session_state["doc_flash"] = ("error", f"Could not cancel {name}: {exc}")


def _delete(doc_id: str, title: str) -> None:
    try:
        client().delete(doc_id)
    except APIError as exc:
        st.session_state["doc_flash"] = ("error", f"Could not delete {title}: {exc}")
    else:
        st.session_state["doc_flash"] = ("success", f"Deleted **{title}**.")


def _list_section() -> None:
    st.subheader("Stored documents")
    flash = st.session_state.pop("doc_flash", None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    docs = documents_or_error()
    if docs is None:
        return
    if not docs:
        st.info("No documents yet: upload one above.", icon=":material/info:")
        return
    head = st.columns([4, 3, 2, 2, 2, 3, 1], vertical_alignment="bottom")
    for col, name in zip(head, ["Title", "Id", "Characters", "Sentences", "Chunks", "Added", ""]):
        col.markdown(f"**{name}**")
    for d in docs:
        row = st.columns([4, 3, 2, 2, 2, 3, 1], vertical_alignment="center")
        row[0].page_link(VIEWS / "reader.py", label=d.title, icon=":material/article:",
                         query_params={"doc": d.doc_id})
        row[1].code(d.doc_id, language=None)
        row[2].write(f"{d.n_chars:,}")
        row[3].write(f"{d.n_sentences:,}")
        row[4].write(f"{d.n_chunks:,}")
        row[5].write(when(d.created_at))
        row[6].button("", key=f"delete-{d.doc_id}", icon=":material/delete:", help=f"Delete {d.title}",
                      on_click=_delete, args=(d.doc_id, d.title))


st.title("Documents")
_upload_section()
st.divider()
_list_section()
