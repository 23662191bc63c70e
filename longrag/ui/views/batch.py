"""Batch: a JSONL file of questions in, a JSONL file of results out (in input order)."""

from __future__ import annotations

import json

import streamlit as st

from longrag.ui.client import APIError, Job
from longrag.ui.common import client, show_error

EXAMPLE = '{"question": "Who wrote the letter?"}\n{"question": "Where does the story begin?", "mode": "plain"}\n'


def _cancel(job_id: str) -> None:
    try:
        client().cancel(job_id)
    except APIError as exc:  # it ended meanwhile
        st.session_state["batch_flash"] = str(exc)


def _watch(job_id: str) -> Job | None:
    bar_col, button_col = st.columns([6, 1], vertical_alignment="center")
    bar = bar_col.progress(0.0, text="queued")
    button_col.button("Cancel", key=f"cancel-{job_id}", on_click=_cancel, args=(job_id,), icon=":material/cancel:")

    def update(job: Job) -> None:
        bar.progress(min(max(job.progress, 0.0), 1.0), text=f"{job.stage or job.state} ({job.progress:.0%})")

    try:
        job = client().wait(job_id, on_update=update, interval=0.5)
    except APIError as exc:
        show_error(exc)
        return None
    bar.progress(1.0 if job.state == "succeeded" else job.progress, text=job.state)
    return job


def _results(job_id: str) -> None:
    try:
        data = client().batch_results(job_id)
    except APIError as exc:
        show_error(exc)
        return
    rows = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        res = r.get("result") if isinstance(r.get("result"), dict) else r
        rows.append({
            "question": r.get("question", ""),
            "answer": res.get("answer", ""),
            "evidence": len(res.get("evidence") or []),
            "total_ms": (res.get("timings") or {}).get("total_ms"),
            "error": (r.get("error") or {}).get("message") if isinstance(r.get("error"), dict) else r.get("error"),
        })
    st.download_button("Download results (JSONL)", data, file_name=f"results-{job_id}.jsonl",
                       mime="application/x-ndjson", type="primary", icon=":material/download:")
    st.dataframe(rows, width="stretch", hide_index=True)


st.title("Batch")
st.caption("One question per line as JSON: `{\"question\": …, \"doc_ids\"?: […], \"mode\"?: …, \"options\"?: {…}}`. "
           "Results come back as JSONL in the same order.")
with st.form("batch", clear_on_submit=True):
    upload = st.file_uploader("Questions (.jsonl)", type=["jsonl", "ndjson", "json", "txt"])
    typed = st.text_area("…or type them here (JSONL, or one plain question per line)", height=120,
                         placeholder=EXAMPLE)
    go = st.form_submit_button("Run batch", type="primary", icon=":material/play_arrow:")

if go:
    try:
        if upload is not None:
            sub = client().submit_batch_jsonl(upload.name, upload.getvalue())
        elif typed.strip():
            items = []
            for line in typed.splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    items.append(json.loads(line) if line.startswith("{") else line)
                except ValueError:
                    items.append(line)
            sub = client().submit_batch(items)
        else:
            st.warning("Upload a file or type some questions first.")
            st.stop()
    except APIError as exc:
        show_error(exc)
        st.stop()
    st.session_state.setdefault("batches", []).insert(0, sub.job_id)
    st.session_state["batch_current"] = sub.job_id

batches: list[str] = st.session_state.get("batches", [])
if batches:
    current = st.selectbox("Batch job", batches, index=batches.index(st.session_state.get("batch_current", batches[0])))
    flash = st.session_state.pop("batch_flash", None)
    if flash:
        st.error(f"Could not cancel: {flash}")
    job = _watch(current)
    if job is not None:
        if job.state == "succeeded":
            _results(current)
        elif job.state == "cancelled":
            st.warning("The batch was cancelled; the questions answered before are below.", icon=":material/cancel:")
            _results(current)
        else:
            st.error(f"The batch failed: {job.error or 'unknown error'}")
