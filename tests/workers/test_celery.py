"""Broker mode end to end: real Redis, real Celery worker processes, a real uvicorn API process.

The tests run in order on one stack (see ``conftest.py``): the round trip, streaming, two
workers sharing a batch, a worker killed while holding a question, and a worker killed during
an ingest. Workers use the tiny random decoder (set through ``LONGRAG_DECODER``) and the real
MiniLM embedder; the API process must never load a model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from http_helpers import DOC, sse_events, wait_job

from longrag.services.db import connect, database_url
from longrag.services.job_store import JobStore

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def api(stack) -> httpx.Client:
    client = stack.start_api()
    stack.start_worker("ingest,qa")
    yield client
    client.close()


@pytest.fixture(scope="module")
def doc_id(api: httpx.Client) -> str:
    r = api.post("/v1/documents", json={"text": DOC, "title": "Cape Wrath"})
    assert r.status_code == 202
    assert wait_job(api, r.json()["job_id"])["state"] == "succeeded"
    return r.json()["doc_id"]


def test_ingest_query_batch_through_workers_api_holds_no_model(api: httpx.Client, doc_id: str, stack):
    job = wait_job(api, api.post("/v1/documents", files={"file": ("cape.txt", DOC.encode() + b"\n")}).json()["job_id"])
    stages = [h["stage"] for h in job["history"]]
    assert [s for s in stages if s in ("parse", "segment", "embed", "index", "done")] == \
        ["parse", "segment", "embed", "index", "done"]
    assert job["worker"].endswith("@" + HOST) and job["state"] == "succeeded"

    res = api.post("/v1/query", json={"question": "Who built the lighthouse?", "doc_ids": [doc_id]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert set(body) >= {"answer", "evidence", "timings", "stats", "mode"}
    assert all(DOC[e["start"]:e["end"]] == e["text"] for e in body["evidence"] if e["doc_id"] == doc_id)

    b = api.post("/v1/batch", json=["Who built the lighthouse?", "What was the cat called?", "When was the storm?"])
    assert wait_job(api, b.json()["job_id"])["state"] == "succeeded"
    rows = [json.loads(x) for x in api.get(f"/v1/batch/{b.json()['job_id']}/results").text.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and all("answer" in r for r in rows)

    assert api.delete(f"/v1/documents/{job['doc_id']}").json()["deleted"] is True
    assert api.get(f"/v1/documents/{job['doc_id']}").status_code == 404

    health = api.get("/healthz").json()
    assert health["status"] == "ok" and health["mode"] == "celery" and health["broker"] == "ok"
    assert health["index"]["chunk"]["status"] == "ok"
    assert health["models_loaded"] == []  # issue 9: the API process holds no model
    metrics = api.get("/metrics").text
    assert 'longrag_queue_depth{queue="qa"}' in metrics and 'longrag_jobs{kind="query",state="succeeded"}' in metrics


def test_streamed_query_arrives_token_by_token(api: httpx.Client, doc_id: str):
    body = {"question": "Who kept the lighthouse?", "doc_ids": [doc_id], "stream": True, "max_new_tokens": 300}
    with api.stream("POST", "/v1/query", json=body) as resp:
        assert resp.status_code == 200
        events = list(sse_events(resp))
    tokens = [e for e in events if e[0] == "token"]
    assert events[-1][0] == "result" and len(tokens) == events[-1][1]["stats"]["generated_tokens"] > 50
    first_arrival, last_generated = tokens[0][2], tokens[-1][1]["t"]
    assert first_arrival < last_generated, "the first token must reach the client before the last is generated"
    assert "".join(e[1]["token"] for e in tokens).strip() == events[-1][1]["answer"]


def test_two_workers_share_a_batch_every_result_once_in_order(api: httpx.Client, doc_id: str, stack):
    stack.start_worker("qa")
    pids = {f"{p.pid}@{HOST}" for p in stack.workers()}
    assert len(pids) == 2
    questions = [f"Question {i}: who built the lighthouse?" for i in range(10)]
    b = api.post("/v1/batch", json={"questions": questions, "max_new_tokens": 16, "doc_ids": [doc_id]})
    assert b.status_code == 202
    assert wait_job(api, b.json()["job_id"])["state"] == "succeeded"
    rows = [json.loads(x) for x in api.get(f"/v1/batch/{b.json()['job_id']}/results").text.splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    assert [r["question"] for r in rows] == questions
    assert all("answer" in r and "error" not in r for r in rows)
    assert {r["worker"] for r in rows} == pids, "both workers should have answered part of the batch"


def test_killing_the_worker_holding_a_question_reruns_it_elsewhere(api: httpx.Client, doc_id: str, stack):
    workers = stack.workers()
    assert len(workers) == 2
    jobs = JobStore(connect(database_url(stack.settings)))
    out: dict = {}

    def ask() -> None:
        out["response"] = api.post("/v1/query", json={"question": "Who kept the cat?", "doc_ids": [doc_id],
                                                      "max_new_tokens": 1500})

    t = threading.Thread(target=ask)
    t.start()
    deadline = time.monotonic() + 60
    holder = None
    while holder is None:
        assert time.monotonic() < deadline and "response" not in out, "no worker took the question"
        running = jobs.find(kind="query", state="running")
        if running and running[-1].worker:
            holder = next(p for p in workers if running[-1].worker == f"{p.pid}@{HOST}")
            rid = running[-1].job_id
        time.sleep(0.02)
    holder.kill()  # SIGKILL mid-answer
    t.join(150)
    assert not t.is_alive()
    r = out["response"]
    assert r.status_code == 200, r.text
    assert r.json()["stats"]["generated_tokens"] > 0
    record = jobs.get(rid)
    assert record.state == "succeeded" and record.attempts >= 2
    assert record.worker != f"{holder.pid}@{HOST}"


def test_sigkill_during_ingest_job_recovers_and_indexes_once(api: httpx.Client, stack, datasets: Path):
    for p in stack.workers():
        p.kill()
    first = stack.start_worker("ingest")  # ready (models loaded) before the job arrives
    raw = (datasets / "gutenberg" / "pg2641_a_room_with_a_view.txt").read_bytes()[20_000:70_000]
    data = raw.decode("utf-8", errors="ignore").encode("utf-8")
    r = api.post("/v1/documents", files={"file": ("room.txt", data, "text/plain")})
    assert r.status_code == 202
    job_id, new_doc = r.json()["job_id"], r.json()["doc_id"]
    deadline = time.monotonic() + 120
    while True:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["stage"] in ("segment", "embed"):
            break
        assert job["state"] != "succeeded", "the ingest finished before the kill: use a bigger document"
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    first.kill()
    assert api.get(f"/v1/documents/{new_doc}").status_code == 404  # nothing half-indexed is visible
    stack.start_worker("ingest,qa")
    job = wait_job(api, job_id, timeout=180)
    assert job["state"] == "succeeded" and job["attempts"] >= 2 and job["doc_id"] == new_doc
    docs = [d for d in api.get("/v1/documents").json() if d["doc_id"] == new_doc]
    assert len(docs) == 1
    db = connect(database_url(stack.settings))
    n_chunks = db.execute("SELECT COUNT(*) FROM chunks WHERE doc_id=?", (new_doc,)).fetchone()[0]
    per_kind = dict(db.execute("SELECT v.kind, COUNT(*) FROM vectors v JOIN chunks c USING (chunk_id) "
                               "WHERE c.doc_id=? GROUP BY v.kind", (new_doc,)).fetchall())
    db.close()
    assert n_chunks == docs[0]["n_chunks"] > 0
    assert per_kind.get("chunk") == n_chunks and set(per_kind.values()) == {n_chunks}  # one vector per chunk and kind
    index = api.get("/healthz").json()["index"]["chunk"]
    assert index["status"] == "ok" and index["indexed"] == index["vectors"]
    again = api.post("/v1/documents", files={"file": ("room.txt", data, "text/plain")}).json()
    assert again["doc_id"] == new_doc and again["state"] == "succeeded"
    res = api.post("/v1/query", json={"question": "Where is the pension?", "doc_ids": [new_doc]})
    assert res.status_code == 200 and res.json()["evidence"][0]["doc_id"] == new_doc
    assert api.get("/healthz").json()["models_loaded"] == []
