"""The REST API in embedded mode (no broker): a real uvicorn on a loopback port, driven by httpx.

Ingestion and questions run on the API's own thread pool with the real MiniLM embedder and the
tiny random decoder (answer quality does not matter here, the contract does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from http_helpers import DOC, serve, sse_events, wait_job

from longrag.config import Settings

OTHER = (
    "Beekeeping in the valley began with monks who kept straw skeps behind the abbey. "
    "Their honey was traded for salt and wool at the autumn fair. "
    "A good hive could give twenty pounds of honey in a warm year."
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_decoder_dir: Path) -> Iterator[httpx.Client]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("api-data"), decoder=str(tiny_decoder_dir),
                        max_file_bytes=20_000, top_k=2, max_new_tokens=8, broker_url=None, api_key=None,
                        # the random decoder's replies would be turned down: token-level stream checks need them as is
                        answer_checks=False)
    with serve(settings) as client:
        yield client


def snapshot(client: httpx.Client) -> tuple:
    """Everything a failed request must leave unchanged: documents and job counts."""
    docs = client.get("/v1/documents").json()
    jobs = client.get("/healthz").json()["jobs"]
    return json.dumps(docs, sort_keys=True), json.dumps(jobs, sort_keys=True)


def test_ingest_query_batch_delete_over_http(api: httpx.Client):
    r = api.post("/v1/documents", json={"text": DOC, "title": "Cape Wrath"})
    assert r.status_code == 202, r.text
    doc_id, job_id = r.json()["doc_id"], r.json()["job_id"]
    job = wait_job(api, job_id)
    assert job["state"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
    stages = [h["stage"] for h in job["history"]]
    assert [s for s in stages if s in ("parse", "segment", "embed", "index", "done")] == \
        ["parse", "segment", "embed", "index", "done"]
    progress = [h["progress"] for h in job["history"]]
    assert progress == sorted(progress) and 0 < progress[0] < progress[-1] == 1.0

    again = api.post("/v1/documents", json={"text": DOC, "title": "Cape Wrath"}).json()
    assert again["doc_id"] == doc_id and wait_job(api, again["job_id"])["state"] == "succeeded"
    up = api.post("/v1/documents", files={"file": ("bees.txt", OTHER.encode(), "text/plain")})
    assert up.status_code == 202
    assert wait_job(api, up.json()["job_id"])["state"] == "succeeded"
    docs = api.get("/v1/documents").json()
    assert sorted(d["doc_id"] for d in docs) == sorted([doc_id, up.json()["doc_id"]])
    assert api.get(f"/v1/documents/{doc_id}").json()["title"] == "Cape Wrath"
    assert api.get(f"/v1/documents/{doc_id}/text").json()["text"] == DOC

    res = api.post("/v1/query", json={"question": "Who built the lighthouse?", "doc_ids": [doc_id]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert set(body) >= {"answer", "evidence", "timings", "stats", "mode"} and body["mode"] == "plain"
    assert body["evidence"] or not body["answerable"]  # no answer, no evidence
    assert all(DOC[e["start"]:e["end"]] == e["text"] for e in body["evidence"])
    assert body["timings"]["total_ms"] >= body["timings"]["ttft_ms"] > 0

    with api.stream("POST", "/v1/query", json={"question": "Who built the lighthouse?", "doc_ids": [doc_id],
                                               "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(resp))
    names = [e[0] for e in events]
    assert names[-1] == "result" and set(names[:-1]) == {"token"}
    final = events[-1][1]
    assert len(names) - 1 == final["stats"]["generated_tokens"]
    assert "".join(e[1]["token"] for e in events[:-1]).strip() == final["answer"]
    assert final["answer"] == body["answer"]  # greedy: the same answer streamed or not

    # a mode's options reach it (GET /v1/modes lists the keys each mode reads)
    listed = api.get("/v1/modes").json()
    assert "rapid" in listed["modes"] and {"eta", "tail", "drafter"} <= set(listed["options"]["rapid"])
    assert listed["options"]["plain"] == []
    fast = api.post("/v1/query", json={"question": "Who built the lighthouse?", "doc_ids": [doc_id], "mode": "rapid",
                                       "max_new_tokens": 4, "options": {"drafter": "llm", "eta": 20, "tail": 0}})
    assert fast.status_code == 200, fast.text
    assert (fast.json()["stats"]["eta"], fast.json()["stats"]["tail"]) == (20, 0)

    questions = ["Who built the lighthouse?", {"question": "What did the monks keep?"}, "What was the cat called?"]
    b = api.post("/v1/batch", json=questions)
    assert b.status_code == 202 and b.json()["n_items"] == 3
    assert wait_job(api, b.json()["job_id"])["state"] == "succeeded"
    lines = api.get(f"/v1/batch/{b.json()['job_id']}/results")
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(x) for x in lines.text.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["question"] for r in rows] == ["Who built the lighthouse?", "What did the monks keep?",
                                             "What was the cat called?"]
    assert all("answer" in r and "evidence" in r for r in rows)
    jsonl = b'{"question": "When was it built?"}\n\n"Where did boats come from?"\n'
    b2 = api.post("/v1/batch", files={"file": ("q.jsonl", jsonl, "application/x-ndjson")})
    assert b2.status_code == 202 and wait_job(api, b2.json()["job_id"])["state"] == "succeeded"
    rows2 = [json.loads(x) for x in api.get(f"/v1/batch/{b2.json()['job_id']}/results").text.splitlines()]
    assert [r["question"] for r in rows2] == ["When was it built?", "Where did boats come from?"]

    health = api.get("/healthz").json()
    assert health["status"] == "ok" and health["mode"] == "embedded" and health["index"]["chunk"]["status"] == "ok"
    metrics = api.get("/metrics").text
    for name in ("longrag_request_seconds_bucket", "longrag_jobs{", "longrag_queue_depth{",
                 "longrag_ingest_bytes_per_second", "longrag_ingested_bytes_total"):
        assert name in metrics
    assert 'longrag_jobs{kind="ingest",state="succeeded"}' in metrics

    other = up.json()["doc_id"]
    assert api.delete(f"/v1/documents/{other}").json() == {"doc_id": other, "deleted": True}
    assert api.get(f"/v1/documents/{other}").status_code == 404
    assert [d["doc_id"] for d in api.get("/v1/documents").json()] == [doc_id]
    assert api.get("/healthz").json()["index"]["chunk"]["status"] == "ok"
    assert "/v1/query" in api.get("/openapi.json").json()["paths"]
    assert api.get("/docs").status_code == 200


def _err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] and err["message"]
    return err


def test_bad_input_gets_clear_json_errors_and_changes_nothing(api: httpx.Client):
    r = api.post("/v1/documents", json={"text": OTHER, "title": "kept"})
    wait_job(api, r.json()["job_id"])
    before = snapshot(api)
    # 413: over LONGRAG_MAX_FILE_BYTES (20 kB here), as JSON text and as a file
    assert _err(api.post("/v1/documents", json={"text": "word " * 5000}), 413)["code"] == "too_large"
    _err(api.post("/v1/documents", files={"file": ("big.txt", b"x. " * 10_000, "text/plain")}), 413)
    # 415: unknown file type, unknown content type
    assert _err(api.post("/v1/documents", files={"file": ("tool.exe", b"MZ\x90\x00", "application/x-msdownload")}),
                415)["code"] == "unsupported_type"
    _err(api.post("/v1/documents", content=b"plain words", headers={"content-type": "text/plain"}), 415)
    # 422: malformed JSON, empty documents and questions
    assert _err(api.post("/v1/query", content=b'{"question": ', headers={"content-type": "application/json"}),
                422)["code"] == "malformed_json"
    _err(api.post("/v1/documents", content=b'{"text": ', headers={"content-type": "application/json"}), 422)
    _err(api.post("/v1/batch", content=b'["a", ', headers={"content-type": "application/json"}), 422)
    _err(api.post("/v1/documents", json={"text": "   "}), 422)
    assert "empty" in _err(api.post("/v1/query", json={"question": "   "}), 422)["message"]
    _err(api.post("/v1/query", json={"question": "x", "mode": "no-such-mode"}), 422)
    _err(api.post("/v1/query", json={"question": "x", "k": 0}), 422)
    _err(api.post("/v1/query", json={"question": "x", "link_hop": -1}), 422)
    # option keys a mode does not read (a typo would otherwise be ignored), a bad option value
    assert "etaa" in _err(api.post("/v1/query", json={"question": "x", "mode": "rapid", "options": {"etaa": 20}}),
                          422)["message"]
    _err(api.post("/v1/query", json={"question": "x", "options": {"eta": 1}}), 422)  # plain reads none
    _err(api.post("/v1/batch", json=[{"question": "x", "mode": "rapid", "options": {"gama": 4}}]), 422)
    _err(api.post("/v1/query", json={"question": "x", "options": ["eta"]}), 422)
    _err(api.post("/v1/batch", json=["fine", ""]), 422)
    _err(api.post("/v1/batch", json=[]), 422)
    # 404: unknown ids everywhere
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/documents/nope"), ("DELETE", "/v1/documents/nope"),
                         ("GET", "/v1/documents/nope/text"), ("GET", "/v1/batch/nope/results"), ("GET", "/v1/nowhere")):
        assert _err(api.request(method, path), 404)["code"] == "not_found"
    _err(api.post("/v1/query", json={"question": "Who?", "doc_ids": ["0000000000000000"]}), 404)
    _err(api.post("/v1/batch", json=[{"question": "Who?", "doc_ids": ["0000000000000000"]}]), 404)
    assert snapshot(api) == before


def test_api_key_guards_every_route_but_healthz(tmp_path: Path, tiny_decoder_dir: Path):
    settings = Settings(data_dir=tmp_path / "keyed", decoder=str(tiny_decoder_dir), api_key="s3cret", broker_url=None)
    with serve(settings) as client:
        assert client.get("/healthz").status_code == 200
        for method, path, kw in (("GET", "/v1/documents", {}), ("POST", "/v1/documents", {"json": {"text": DOC}}),
                                 ("POST", "/v1/query", {"json": {"question": "Who?"}}), ("GET", "/metrics", {}),
                                 ("GET", "/v1/jobs/x", {}), ("POST", "/v1/batch", {"json": ["q"]})):
            assert _err(client.request(method, path, **kw), 401)["code"] == "unauthorized"
            _err(client.request(method, path, headers={"X-API-Key": "wrong"}, **kw), 401)
        assert client.get("/v1/documents").status_code == 401
        assert client.get("/v1/documents", headers={"X-API-Key": "s3cret"}).json() == []
        assert client.get("/healthz").json()["documents"] == 0  # nothing was stored by refused calls


def test_query_past_its_timeout_is_a_clear_504(tmp_path: Path, tiny_decoder_dir: Path):
    settings = Settings(data_dir=tmp_path / "slow", decoder=str(tiny_decoder_dir), broker_url=None,
                        query_timeout_s=0.05, max_new_tokens=8)
    with serve(settings) as client:
        wait_job(client, client.post("/v1/documents", json={"text": DOC}).json()["job_id"])
        r = client.post("/v1/query", json={"question": "Who built it?", "max_new_tokens": 64})
        assert _err(r, 504)["code"] == "timeout"


def test_question_about_a_document_still_being_ingested_is_a_clear_409(tmp_path: Path, tiny_decoder_dir: Path):
    from longrag.services import jobs as J

    settings = Settings(data_dir=tmp_path / "ingesting", decoder=str(tiny_decoder_dir), broker_url=None, api_key=None)
    with serve(settings) as client:
        doc_id, sha = J.doc_id_for(b"a document whose ingest has not finished")
        # an ingest job the API accepted and a worker has not finished: nothing of it is indexed yet
        job = J.get_jobs(settings).create("ingest", state=J.RUNNING, doc_id=doc_id, sha256=sha, n_bytes=10)
        r = client.post("/v1/query", json={"question": "Who?", "doc_ids": [doc_id]})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "not_ready" and job.job_id in r.json()["error"]["message"]
        # an id no job knows stays a 404
        r = client.post("/v1/query", json={"question": "Who?", "doc_ids": ["0123456789abcdef"]})
        assert r.status_code == 404
        assert client.get("/v1/documents").json() == []


def test_too_long_question_is_a_422_before_anything_is_queued(api: httpx.Client):
    before = snapshot(api)
    r = api.post("/v1/query", json={"question": "Who? " + "quoted words " * 400})
    assert r.status_code == 422 and "limit is 2000" in r.json()["error"]["message"]
    assert snapshot(api) == before


def test_delete_job_cancels_it_once_and_finished_jobs_are_a_409(tmp_path: Path, tiny_decoder_dir: Path):
    from longrag.services import jobs as J

    settings = Settings(data_dir=tmp_path / "cancel", decoder=str(tiny_decoder_dir), broker_url=None, api_key=None,
                        answer_checks=False, max_new_tokens=4)
    with serve(settings) as client:
        # a batch whose fan-out has not reached a worker yet: cancelled over REST, its results empty
        store = J.get_jobs(settings)
        batch = store.create("batch", payload={"n_items": 2})
        store.add_items(batch.job_id, [{"question": "Who?"}, {"question": "Where?"}])
        r = client.delete(f"/v1/jobs/{batch.job_id}")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "cancelled" and client.get(f"/v1/jobs/{batch.job_id}").json()["state"] == "cancelled"
        res = client.get(f"/v1/batch/{batch.job_id}/results")
        assert res.status_code == 200 and res.text == ""
        again = client.delete(f"/v1/jobs/{batch.job_id}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"

        up = client.post("/v1/documents", json={"text": DOC, "title": "Cape Wrath"}).json()
        assert wait_job(client, up["job_id"])["state"] == "succeeded"
        before = client.get("/v1/documents").json()
        r = client.delete(f"/v1/jobs/{up['job_id']}")
        assert r.status_code == 409 and "already ended (succeeded)" in r.json()["error"]["message"]
        assert client.get("/v1/documents").json() == before  # nothing stored changed
        assert client.delete("/v1/jobs/0123456789abcdef").status_code == 404
