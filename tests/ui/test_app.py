"""Fast checks of the Streamlit pages with Streamlit's AppTest against a real running API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from longrag.ui.client import LongragClient

APP = Path(__file__).resolve().parents[2] / "longrag" / "ui" / "app.py"


def _app(monkeypatch: pytest.MonkeyPatch, url: str, page: str | None = None) -> AppTest:
    """The app against the API at ``url``, run once, then on ``page`` (e.g. ``views/ask.py``) if given."""
    monkeypatch.setenv("LONGRAG_API_URL", url)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    return at.switch_page(page).run() if page else at


def _texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in at.get(kind)]


def _press(at: AppTest, label: str) -> None:
    """Click the button with this label and run the page again, as a browser's click would."""
    next(b for b in at.button if b.label == label).click()
    at.run()


def test_unreachable_api_is_reported_not_crashed(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    at = _app(monkeypatch, f"http://127.0.0.1:{closed_port}")
    assert not at.exception
    assert any("cannot reach the API" in e.value for e in at.error)


@pytest.mark.integration  # the API embeds with the real MiniLM
def test_upload_through_the_page_then_list_and_delete(
    monkeypatch: pytest.MonkeyPatch, api_server, api: LongragClient
) -> None:
    at = _app(monkeypatch, api_server.url)
    body = b"Apples grow in orchards. The orchard at Weller Farm has four hundred trees.\n"
    at.get("file_uploader")[0].upload("orchard.txt", body, "text/plain")
    _press(at, "Upload and index")
    assert not at.exception
    assert any("orchard.txt" in s.value and "ready" in s.value for s in at.success), _texts(at, "error")
    doc = next(d for d in api.documents() if d.filename == "orchard.txt" or d.title == "orchard.txt")
    assert doc.n_chars == len(body.decode())

    at.button(key=f"delete-{doc.doc_id}").click()
    at.run()
    assert not at.exception
    assert any("Deleted" in s.value for s in at.success)
    assert all(d.doc_id != doc.doc_id for d in api.documents())


@pytest.mark.integration  # the API embeds with the real MiniLM
def test_ask_page_shows_answer_marked_evidence_and_timings(
    monkeypatch: pytest.MonkeyPatch, api_server, api: LongragClient, gull_point: str
) -> None:
    doc_id = gull_point
    text = api.document_text(doc_id)
    at = _app(monkeypatch, api_server.url, "views/ask.py")
    assert not at.exception
    at.text_area[0].input("How many sailors did Margaret bring back?")
    at.multiselect[0].select(doc_id)
    _press(at, "Ask")
    assert not at.exception, at.exception
    assert not at.error, _texts(at, "error")
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Retrieval", "First token", "Total", "Speed"}
    result = at.session_state["last_answer"]["result"]
    tps = result.timings["tokens_per_s"]  # none after a one-token answer: a dash, not "0.0 tok/s"
    assert metrics["Speed"] == (f"{tps:.1f} tok/s" if tps > 0 else "–")
    marked = [h.proto.body for h in at.html if "<mark" in h.proto.body]
    assert marked
    for ev in result.evidence:
        assert ev.doc_id == doc_id and text[ev.start:ev.end] == ev.text
        assert any(f'data-start="{ev.start}" data-end="{ev.end}"' in m for m in marked)
    links = [p for p in at.get("page_link") if "start" in (p.proto.query_string or "")]
    assert len(links) == len(result.evidence)


@pytest.mark.integration  # the API embeds with the real MiniLM
def test_batch_page_runs_questions_and_offers_results(
    monkeypatch: pytest.MonkeyPatch, api_server, gull_point: str
) -> None:
    at = _app(monkeypatch, api_server.url, "views/batch.py")
    questions = ["Where was Margaret born?", "What did the board award her?", "When did she retire?"]
    at.text_area[0].input("\n".join(json.dumps({"question": q}) for q in questions))
    _press(at, "Run batch")
    assert not at.exception, at.exception
    assert not at.error, _texts(at, "error")
    assert at.get("download_button"), "no download button"
    df = at.dataframe[0].value
    assert list(df["question"]) == questions


@pytest.mark.integration  # the API embeds with the real MiniLM
def test_reader_opens_a_document_at_the_linked_position(
    monkeypatch: pytest.MonkeyPatch, api_server, api: LongragClient, gull_point: str
) -> None:
    text = api.document_text(gull_point)
    start = text.index("In the winter storm")
    end = text.index("shore.") + len("shore.")
    monkeypatch.setenv("LONGRAG_API_URL", api_server.url)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/reader.py")
    at.query_params.update({"doc": gull_point, "start": str(start), "end": str(end)})
    at.run()
    assert not at.exception and not at.error
    [frag] = [h.proto.body for h in at.html if "<mark" in h.proto.body]
    assert f'data-start="{start}" data-end="{end}"' in frag
    assert text[start:end] in frag


@pytest.mark.integration  # the API embeds with the real MiniLM
def test_ask_page_sends_mode_options_and_reports_bad_ones(
    monkeypatch: pytest.MonkeyPatch, api_server, gull_point: str
) -> None:
    at = _app(monkeypatch, api_server.url, "views/ask.py")
    options = at.text_input[0]
    assert "rapid: " in options.help and "eta" in options.help  # the keys each mode reads, from /v1/modes
    at.text_area[0].input("Who kept the lighthouse?")
    at.multiselect[0].select(gull_point)
    at.selectbox[0].select("rapid")

    options.input('{"eta": 2')  # not JSON: refused on the page, nothing sent
    _press(at, "Ask")
    assert not at.exception
    assert any("not valid JSON" in e.value for e in at.error), _texts(at, "error")
    assert "last_answer" not in at.session_state

    at.text_input[0].input('{"etaa": 2}')  # a typo: the API's clear refusal is shown
    _press(at, "Ask")
    assert not at.exception
    assert any("etaa" in e.value and "422" in e.value for e in at.error), _texts(at, "error")
    assert "last_answer" not in at.session_state

    at.text_input[0].input('{"drafter": "llm", "eta": 2, "tail": 0}')
    _press(at, "Ask")
    assert not at.exception, at.exception
    assert not at.error, _texts(at, "error")
    stats = at.session_state["last_answer"]["result"].stats
    assert (stats["drafter"], stats["eta"], stats["tail"]) == ("llm", 2.0, 0.0)


def _show_timings(tokens_per_s: float) -> None:  # runs inside AppTest: imports are its own
    from longrag.ui.client import QueryResult
    from longrag.ui.views.ask import _timings

    _timings(QueryResult("Seven", [], {"retrieval_ms": 62.0, "ttft_ms": 3024.0, "total_ms": 3100.0,
                                       "tokens_per_s": tokens_per_s}, {}, "plain"))


@pytest.mark.parametrize("tps, shown", [(7.25, "7.2 tok/s"), (0.0, "–")])
def test_speed_metric_is_a_dash_when_there_was_no_decode_step(tps: float, shown: str) -> None:
    at = AppTest.from_function(_show_timings, args=(tps,)).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Speed"] == shown


@pytest.mark.integration  # the API embeds with the real MiniLM
def test_ask_page_is_a_conversation_per_document_set(
    monkeypatch: pytest.MonkeyPatch, api_server, gull_point: str
) -> None:
    at = _app(monkeypatch, api_server.url, "views/ask.py")
    at.text_area[0].input("How many sailors did Margaret Hale bring back?")
    at.multiselect[0].select(gull_point)
    _press(at, "Ask")
    assert not at.exception and not at.error, _texts(at, "error")
    assert not at.chat_message  # a first question has no history yet
    first = at.session_state["last_answer"]["result"]

    at.text_area[0].input("Where was she born?")
    _press(at, "Ask")
    assert not at.exception and not at.error, _texts(at, "error")
    result = at.session_state["last_answer"]["result"]
    assert result.stats["standalone_question"] == "Where was Margaret Hale born?" and result.stats["turn"] == 1
    assert any("asked as: Where was Margaret Hale born?" in c.value for c in at.caption)
    user, assistant = at.chat_message  # the earlier turn, above the new answer
    assert user.markdown[0].value == "How many sailors did Margaret Hale bring back?"
    assert assistant.markdown[0].value == first.shown()
