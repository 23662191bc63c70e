"""The client's server-sent-events parsing and its mapping to tokens and results."""

from __future__ import annotations

import json

import pytest

from longrag.ui.client import APIError, QueryResult, SSEvent, _stream_item, iter_sse

RESULT = {"answer": "at 2 a.m.", "evidence": [{"doc_id": "d1", "start": 5, "end": 20, "text": "x" * 15}],
          "timings": {"retrieval_ms": 3.0, "ttft_ms": 9.5, "total_ms": 40.0, "tokens_per_s": 12.0},
          "stats": {"passages": 2}, "mode": "plain"}


def test_iter_sse_parses_named_multiline_and_comment_events() -> None:
    body = [": keep-alive", "event: token", "data: {\"token\": \"He\"}", "", "data: line one", "data: line two",
            "", "event: result", f"data: {json.dumps(RESULT)}", ""]
    events = list(iter_sse(iter(body)))
    assert events[0] == SSEvent("token", '{"token": "He"}')
    assert events[1] == SSEvent("message", "line one\nline two")
    assert events[2].event == "result"


def test_iter_sse_yields_a_trailing_event_without_blank_line() -> None:
    assert list(iter_sse(iter(["data: tail"]))) == [SSEvent("message", "tail")]


def test_stream_items_map_tokens_and_the_final_result() -> None:
    assert _stream_item(SSEvent("token", json.dumps({"token": " lamp"}))) == " lamp"
    assert _stream_item(SSEvent("token", json.dumps(" raw"))) == " raw"
    res = _stream_item(SSEvent("result", json.dumps(RESULT)))
    assert isinstance(res, QueryResult)
    assert res.answer == "at 2 a.m." and res.evidence[0].end == 20 and res.timings["ttft_ms"] == 9.5


def test_error_event_raises_with_the_api_message() -> None:
    with pytest.raises(APIError, match="no documents"):
        _stream_item(SSEvent("error", json.dumps({"error": {"code": "invalid_request",
                                                            "message": "no documents are ingested yet"}})))
