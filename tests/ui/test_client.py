"""The UI's typed REST client against a real running API (``longrag serve``, tiny decoder)."""

from __future__ import annotations

import json

import httpx
import pytest

from longrag.ui.client import RESET, APIError, Job, LongragClient, QueryResult

pytestmark = pytest.mark.integration  # the API embeds with the real MiniLM


def test_upload_reports_progress_and_text_matches_offsets(api: LongragClient) -> None:
    body = "Cedar Hill station opened in 1907. Its first stationmaster was Ida Brandt.\n".encode()
    sub = api.upload("cedar.txt", body, "text/plain")
    seen: list[Job] = []
    job = api.wait(sub.job_id, on_update=seen.append, interval=0.05, timeout=120)
    assert job.state == "succeeded" and job.progress == pytest.approx(1.0)
    progress = [j.progress for j in seen]
    assert progress == sorted(progress)
    doc = api.document(sub.doc_id)
    assert doc.filename == "cedar.txt" and doc.n_chars == len(body.decode())
    assert api.document_text(sub.doc_id) == body.decode()
    assert any(d.doc_id == sub.doc_id for d in api.documents())
    again = api.upload("cedar-copy.txt", body, "text/plain")  # identical bytes: same document
    assert again.doc_id == sub.doc_id


def test_stream_yields_tokens_then_the_same_result_shape_as_query(api: LongragClient, gull_point: str) -> None:
    items = list(api.stream_query("When did Margaret retire?", doc_ids=[gull_point], mode="plain"))
    assert RESET not in items
    tokens, final = items[:-1], items[-1]
    assert isinstance(final, QueryResult) and tokens and all(isinstance(t, str) for t in tokens)
    assert "".join(tokens).strip() == final.answer.strip()
    text = api.document_text(gull_point)
    for ev in final.evidence:
        assert ev.doc_id == gull_point and text[ev.start:ev.end] == ev.text
    assert {"retrieval_ms", "ttft_ms", "total_ms", "tokens_per_s"} <= set(final.timings)
    plain = api.query("When did Margaret retire?", doc_ids=[gull_point], mode="plain")
    assert plain.mode == final.mode == "plain" and plain.evidence


def test_modes_and_batch_jsonl_round_trip(api: LongragClient, gull_point: str) -> None:
    assert {"plain", "full"} <= set(api.modes())
    options = api.mode_options()
    assert set(options) == set(api.modes()) and {"eta", "tail", "drafter"} <= set(options["rapid"])
    questions = ["Who kept the lighthouse?", "What did the lamp burn?"]
    data = "".join(json.dumps({"question": q, "doc_ids": [gull_point]}) + "\n" for q in questions).encode()
    sub = api.submit_batch_jsonl("questions.jsonl", data)
    assert api.wait(sub.job_id, interval=0.2, timeout=300).state == "succeeded"
    rows = [json.loads(line) for line in api.batch_results(sub.job_id).decode().splitlines()]
    assert [r["question"] for r in rows] == questions


def test_errors_come_back_as_api_errors_with_status_and_code(api: LongragClient) -> None:
    with pytest.raises(APIError) as missing:
        api.document("does-not-exist")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    with pytest.raises(APIError) as empty:
        api.query("   ")
    assert empty.value.status == 422
    with pytest.raises(APIError) as typo:
        api.query("Who?", mode="rapid", options={"etaa": 2})
    assert typo.value.status == 422 and "etaa" in str(typo.value)
    with pytest.raises(APIError) as stream_missing:
        list(api.stream_query("Who?", doc_ids=["does-not-exist"]))
    assert stream_missing.value.status == 404


@pytest.mark.parametrize("status, body, expected", [
    (200, {"modes": ["plain", "rapid"], "options": {"rapid": ["eta"]}}, {"plain": [], "rapid": ["eta"]}),
    (200, ["plain", "full"], {"plain": [], "full": []}),  # an older API: names only
    (404, {"detail": "Not Found"}, {}),  # older still: no such route
])
def test_mode_options_reads_each_api_shape_in_one_request(status, body, expected) -> None:
    # the shapes earlier API versions answered with (a stand-in server: those versions are gone)
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(status, json=body)

    api = LongragClient("http://old-api", http=httpx.Client(base_url="http://old-api",
                                                            transport=httpx.MockTransport(answer)))
    assert api.mode_options() == expected and calls == ["/v1/modes"]
    assert api.modes() == list(expected)


def test_evidence_keeps_page_and_section_where_the_format_has_them() -> None:
    result = QueryResult.from_json({"answer": "x", "evidence": [
        {"doc_id": "d", "start": 0, "end": 1, "text": "x", "page": 2, "section": "Guide > Install"},
        {"doc_id": "d", "start": 2, "end": 3, "text": "y"}]})
    assert [(e.page, e.section) for e in result.evidence] == [(2, "Guide > Install"), (None, None)]
