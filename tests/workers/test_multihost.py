"""Scale-out without a shared file system: two API processes and two workers, each with a data
directory of its own, sharing only Redis and a PostgreSQL server.

Ingest through one API and query through the other; a worker SIGKILLed mid-ingest (the job
finishes once on the other worker, no duplicate chunks or vectors); a document deleted through
one API is gone from the other's answers on the very next request.
"""

from __future__ import annotations

import time
from pathlib import Path

from http_helpers import DOC, wait_job

from longrag.services.db import connect


def _count_units(url: str, doc_id: str) -> tuple[int, dict[str, int]]:
    db = connect(url)
    try:
        n_chunks = db.execute("SELECT COUNT(*) FROM chunks WHERE doc_id=?", (doc_id,)).fetchone()[0]
        per_kind = dict(db.execute("SELECT v.kind, COUNT(*) FROM vectors v JOIN chunks c USING (chunk_id) "
                                   "WHERE c.doc_id=? GROUP BY v.kind", (doc_id,)).fetchall())
    finally:
        db.close()
    return int(n_chunks), {k: int(v) for k, v in per_kind.items()}


def test_ingest_on_one_host_query_and_delete_across_hosts(hosts):
    r = hosts.api_one.post("/v1/documents", json={"text": DOC, "title": "Cape Wrath"})
    assert r.status_code == 202
    doc_id = r.json()["doc_id"]
    assert wait_job(hosts.api_two, r.json()["job_id"])["state"] == "succeeded"  # the job record is shared
    assert [d["doc_id"] for d in hosts.api_two.get("/v1/documents").json()] == [doc_id]
    text = hosts.api_two.get(f"/v1/documents/{doc_id}/text").json()["text"]
    res = hosts.api_two.post("/v1/query", json={"question": "Who built the lighthouse?", "doc_ids": [doc_id]})
    assert res.status_code == 200, res.text
    evidence = res.json()["evidence"]
    assert evidence and all(text[e["start"]:e["end"]] == e["text"] for e in evidence)

    other = hosts.api_two.post("/v1/documents", json={"text": "The Orrin canal links the two lakes of the plain. "
                                                           "Barges carried slate until the railway opened in 1874."})
    assert wait_job(hosts.api_one, other.json()["job_id"])["state"] == "succeeded"
    assert hosts.api_one.delete(f"/v1/documents/{doc_id}").json()["deleted"] is True
    assert hosts.api_two.get(f"/v1/documents/{doc_id}").status_code == 404
    for _ in range(2):  # whichever worker answers, neither cites the deleted document
        res = hosts.api_two.post("/v1/query", json={"question": "Who built the lighthouse?"})
        assert res.status_code == 200, res.text
        assert {e["doc_id"] for e in res.json()["evidence"]} == {other.json()["doc_id"]}
    for s in (hosts.one, hosts.two):  # nothing shared on disk: no database file, no uploads
        assert not (s.data_dir / "longrag.sqlite3").exists()
        assert not (s.data_dir / "uploads").exists()


def test_worker_killed_mid_ingest_the_job_finishes_once_on_the_other(hosts, datasets: Path):
    raw = (datasets / "gutenberg" / "pg2641_a_room_with_a_view.txt").read_bytes()[20_000:70_000]
    data = raw.decode("utf-8", errors="ignore").encode("utf-8")
    r = hosts.api_one.post("/v1/documents", files={"file": ("room.txt", data, "text/plain")})
    assert r.status_code == 202
    job_id, doc_id = r.json()["job_id"], r.json()["doc_id"]
    deadline = time.monotonic() + 120
    while True:
        job = hosts.api_two.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["stage"] in ("segment", "embed"):
            break
        assert job["state"] != "succeeded", "the ingest finished before the kill: use a bigger document"
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    holder = next(p for s in (hosts.one, hosts.two) for p in s.workers() if job["worker"].startswith(f"{p.pid}@"))
    holder.kill()
    assert hosts.api_two.get(f"/v1/documents/{doc_id}").status_code == 404  # nothing half-stored is visible
    job = wait_job(hosts.api_two, job_id, timeout=180)
    assert job["state"] == "succeeded" and job["attempts"] >= 2 and job["doc_id"] == doc_id
    assert not job["worker"].startswith(f"{holder.pid}@")
    docs = [d for d in hosts.api_one.get("/v1/documents").json() if d["doc_id"] == doc_id]
    assert len(docs) == 1
    n_chunks, per_kind = _count_units(hosts.database_url, doc_id)
    assert n_chunks == docs[0]["n_chunks"] > 0
    assert per_kind.get("chunk") == n_chunks and set(per_kind.values()) == {n_chunks}  # one vector per chunk and kind
    res = hosts.api_one.post("/v1/query", json={"question": "Where is the pension?", "doc_ids": [doc_id]})
    assert res.status_code == 200 and res.json()["evidence"][0]["doc_id"] == doc_id
