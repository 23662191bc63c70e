"""Ask: a conversation over chosen documents. Each question is the next turn of the chosen
document set's conversation (a follow-up is rewritten to stand alone by the API); the answer
streams in, then evidence and timings; the turns before it are shown above."""

from __future__ import annotations

from typing import Any

import streamlit as st

from longrag.ui.client import RESET, APIError, QueryResult
from longrag.ui.common import (DEFAULT_MODES, VIEWS, client, doc_label, documents_or_error, parse_options, show_error,
                               text_of)
from longrag.ui.highlight import window_html


def _modes() -> tuple[list[str], dict[str, list[str]]]:
    """The modes the API offers and the option keys each one reads."""
    try:
        options = client().mode_options()  # one GET /v1/modes: the names and their option keys
        return (list(options) or DEFAULT_MODES), options
    except APIError:
        return DEFAULT_MODES, {}


def _options_help(options: dict[str, list[str]]) -> str:
    keys = [f"{m}: {', '.join(k)}" for m, k in options.items() if k]
    return ("A JSON object of the chosen mode's options, as the REST API's `options`. "
            + ("Keys each mode reads — " + "; ".join(keys) + "." if keys else ""))


def _set_key(doc_ids: list[str]) -> str:
    """A document set as the key of its conversation in the session ("*": all documents)."""
    return ",".join(sorted(doc_ids)) or "*"


def _conversation(doc_ids: list[str]) -> str:
    """The conversation of this document set in this session (started on its first question)."""
    key = _set_key(doc_ids)
    convs = st.session_state.setdefault("conversations", {})
    if key not in convs:
        convs[key] = client().create_conversation(doc_ids or None)
    return convs[key]


def _history(doc_ids: list[str], *, skip_last: bool = False) -> None:
    """The earlier turns of the chosen document set's conversation, and a button to start over
    (``skip_last``: the last turn is the answer shown below)."""
    key = _set_key(doc_ids)
    cid = st.session_state.get("conversations", {}).get(key)
    if cid is None:
        return
    try:
        turns = client().conversation(cid)["turns"]
    except APIError:
        return
    turns = turns[:-1] if skip_last else turns
    if not turns:
        return
    head, button = st.columns([5, 1], vertical_alignment="center")
    head.markdown("#### Conversation")
    if button.button("New conversation", icon=":material/restart_alt:"):
        st.session_state["conversations"].pop(key, None)
        st.rerun()
    for turn in turns:
        with st.chat_message("user"):
            st.markdown(turn["question"])
            if turn["standalone_question"] != turn["question"]:
                st.caption(f"asked as: {turn['standalone_question']}")
        with st.chat_message("assistant"):
            st.markdown(QueryResult.from_json(turn["answer"]).shown())


def _stream_answer(question: str, doc_ids: list[str], mode: str, options: dict[str, Any] | None,
                   conversation_id: str | None = None) -> QueryResult:
    """Show the answer token by token as the API streams it; returns the final result."""
    box = st.empty()
    shown = ""
    box.markdown("_waiting for the first token…_")
    for item in client().stream_query(question, doc_ids=doc_ids or None, mode=mode, options=options,
                                      conversation_id=conversation_id):
        if isinstance(item, QueryResult):
            box.markdown(item.shown())
            return item
        if item is RESET:
            shown = ""
            box.markdown("_a worker restarted the answer…_")
            continue
        shown += item
        box.markdown(shown + " ▌")
    raise APIError("the stream ended without a final result")


def _timings(result: QueryResult) -> None:
    t = result.timings
    cols = st.columns(4)
    cols[0].metric("Retrieval", f"{t.get('retrieval_ms', 0):.0f} ms")
    cols[1].metric("First token", f"{t.get('ttft_ms', 0):.0f} ms")
    cols[2].metric("Total", f"{t.get('total_ms', 0):.0f} ms")
    tps = t.get("tokens_per_s") or 0  # decode speed after the first token: none for a one-token answer or CFIC
    cols[3].metric("Speed", f"{tps:.1f} tok/s" if tps > 0 else "–", help="decode tokens per second after the first")


def _evidence(result: QueryResult, titles: dict[str, str], radius: int) -> None:
    if not result.evidence:
        st.info("No evidence was returned for this answer.")
        return
    for i, ev in enumerate(result.evidence, 1):
        with st.container(border=True):
            head, link = st.columns([5, 1], vertical_alignment="center")
            where = "".join([f" · page {ev.page}" if ev.page else "", f" · {ev.section}" if ev.section else ""])
            head.markdown(f"**Evidence {i}** · {titles.get(ev.doc_id, ev.doc_id)}{where} · "
                          f"characters `{ev.start:,}–{ev.end:,}`")
            link.page_link(VIEWS / "reader.py", label="Open at position", icon=":material/open_in_new:",
                           query_params={"doc": ev.doc_id, "start": str(ev.start), "end": str(ev.end)})
            try:
                text = text_of(ev.doc_id)
            except APIError as exc:
                show_error(exc)
                st.markdown(f"> {ev.text}")
                continue
            if text[ev.start:ev.end] != ev.text:
                st.warning("The document changed since this answer: showing the evidence alone.")
                st.markdown(f"> {ev.text}")
                continue
            st.html(window_html(text, ev.start, ev.end, doc_id=ev.doc_id, radius=radius))


def _result(result: QueryResult, titles: dict[str, str], radius: int) -> None:
    _timings(result)
    st.markdown("#### Evidence")
    _evidence(result, titles, radius)
    with st.expander("Statistics"):
        st.json({"mode": result.mode, **result.stats})


st.title("Ask")
docs = documents_or_error()
if docs is not None and not docs:
    st.info("No documents yet: add some on the Documents page first.", icon=":material/info:")
    st.page_link(VIEWS / "documents.py", label="Go to Documents", icon=":material/description:")
    st.stop()
docs = docs or []
titles = {d.doc_id: d.title for d in docs}

with st.form("ask"):
    question = st.text_area("Question", placeholder="Who …? When …? Why …?", height=90)
    c1, c2, c3 = st.columns([4, 2, 2])
    chosen = c1.multiselect("Documents (none chosen: search all)", options=[d.doc_id for d in docs],
                            format_func=lambda i: doc_label(next(d for d in docs if d.doc_id == i)))
    modes, mode_options = _modes()
    mode = c2.selectbox("Mode", modes, index=modes.index("plain") if "plain" in modes else 0)
    radius = c3.slider("Context around evidence (chars)", 100, 2000, 300, step=100)
    raw_options = st.text_input("Mode options (JSON, optional)", placeholder='{"drafter": "llm", "eta": 20, "tail": 0}',
                                help=_options_help(mode_options))
    stream = st.toggle("Stream tokens", value=True)
    asked = st.form_submit_button("Ask", type="primary", icon=":material/send:")

if asked:
    try:
        options = parse_options(raw_options)
    except ValueError as exc:
        st.error(str(exc), icon=":material/error:")
        st.stop()
    if not question.strip():
        st.warning("Type a question first.")
    else:
        try:
            cid = _conversation(chosen)
            _history(chosen)
            st.markdown("#### Answer")
            if stream:
                with st.container(border=True):
                    result = _stream_answer(question, chosen, mode, options, cid)
            else:
                with st.spinner("Thinking…"):
                    result = client().query(question, doc_ids=chosen or None, mode=mode, options=options,
                                            conversation_id=cid)
                with st.container(border=True):
                    st.markdown(result.shown())
        except APIError as exc:
            show_error(exc)
        else:
            st.session_state["last_answer"] = {"question": question, "result": result, "radius": radius,
                                               "doc_ids": chosen}
            asked_as = result.stats.get("standalone_question")
            if asked_as and asked_as != question.strip():
                st.caption(f"asked as: {asked_as}")
            _result(result, titles, radius)
elif "last_answer" in st.session_state:
    last = st.session_state["last_answer"]
    _history(last.get("doc_ids") or [], skip_last=True)
    st.markdown("#### Answer")
    st.caption(f"Question: {last['question']}")
    with st.container(border=True):
        st.markdown(last["result"].shown())
    _result(last["result"], titles, last["radius"])
