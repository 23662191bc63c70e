"""The job store itself (``longrag/services/job_store.py``): job records and their states,
cancelling, batch items, and the uploads waiting for their ingest.

A real store on each engine (SQLite and PostgreSQL); no model is loaded.
"""

from __future__ import annotations

import time

import pytest

from longrag.config import get_settings
from longrag.errors import InvalidRequestError, JobFinishedError, NotFoundError
from longrag.services.job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    JobStore,
    get_jobs,
    worker_id,
)

pytestmark = pytest.mark.usefixtures("each_backend")  # SQLite and PostgreSQL


@pytest.fixture()
def store() -> JobStore:
    return get_jobs(get_settings())


def test_get_jobs_is_one_store_per_database(store: JobStore):
    assert get_jobs(get_settings()) is store
    assert get_jobs() is store  # the configured settings by default


def test_create_get_and_find(store: JobStore):
    job = store.create("ingest", doc_id="d1", sha256="s1", n_bytes=12, payload={"sha256": "s1", "title": "T"})
    assert (job.kind, job.state, job.progress, job.stage, job.attempts) == ("ingest", QUEUED, 0.0, None, 0)
    assert job.payload == {"sha256": "s1", "title": "T"} and job.history == []
    assert job.doc_id == "d1" and job.n_bytes == 12
    assert job.started_at is None and job.finished_at is None and job.created_at <= time.time()
    assert store.get(job.job_id) == job
    assert "payload" not in job.public() and job.public()["job_id"] == job.job_id

    done = store.create("ingest", job_id="fixed-id", state=SUCCEEDED, sha256="s2")
    assert done.job_id == "fixed-id"
    assert (done.state, done.progress, done.stage) == (SUCCEEDED, 1.0, "done") and done.finished_at is not None
    batch = store.create("batch", payload={"n_items": 4})
    assert batch.public()["n_items"] == 4

    assert [j.job_id for j in store.find(kind="ingest")] == [job.job_id, "fixed-id"]  # oldest first
    assert [j.job_id for j in store.find(kind="ingest", state=SUCCEEDED)] == ["fixed-id"]
    assert [j.job_id for j in store.find(sha256="s1")] == [job.job_id]
    assert [j.job_id for j in store.find(doc_id="d1")] == [job.job_id]
    assert store.find(kind="query") == []
    assert len(store.find()) == 3
    with pytest.raises(NotFoundError):
        store.get("no-such-job")


def test_start_progress_succeed(store: JobStore):
    job = store.create("ingest")
    started = store.start(job.job_id)
    assert started.state == RUNNING and started.worker == worker_id() and started.attempts == 1
    assert started.started_at is not None

    store.progress(job.job_id, "parse", 0.1)
    store.progress(job.job_id, "parse", 0.123456)  # same stage: one history entry, progress moves
    store.progress(job.job_id, "embed", 0.5)
    running = store.get(job.job_id)
    assert running.stage == "embed" and running.progress == 0.5
    assert [(h["stage"], h["progress"]) for h in running.history] == [("parse", 0.1), ("embed", 0.5)]
    assert store.find(state=RUNNING)[0].job_id == job.job_id

    assert store.succeed(job.job_id, doc_id="doc-1") is True
    done = store.get(job.job_id)
    assert (done.state, done.progress, done.stage, done.doc_id) == (SUCCEEDED, 1.0, "done", "doc-1")
    assert done.finished_at >= done.started_at
    store.progress(job.job_id, "index", 0.9)  # a late report does not touch a finished job
    assert store.get(job.job_id).stage == "done"
    again = store.start(job.job_id)  # a re-delivered task leaves a succeeded job as it is
    assert again.state == SUCCEEDED and again.attempts == 1


def test_progress_detail_is_stored_reported_and_cleared(store: JobStore):
    job = store.create("ingest")
    assert store.get(job.job_id).detail is None and store.get(job.job_id).public()["detail"] is None
    store.start(job.job_id)
    store.progress(job.job_id, "parse", 0.0537, detail="page 37 of 1000")
    running = store.get(job.job_id)
    assert (running.stage, running.progress, running.detail) == ("parse", 0.0537, "page 37 of 1000")
    public = running.public()  # GET /v1/jobs/{id}: the fields it always had, and the detail
    assert public["detail"] == "page 37 of 1000"
    assert {"job_id", "kind", "state", "progress", "stage", "error", "error_code", "doc_id", "n_bytes",
            "history", "worker", "attempts", "created_at", "started_at", "finished_at"} <= public.keys()
    store.progress(job.job_id, "segment", 0.15)  # a report without a detail clears it
    assert store.get(job.job_id).detail is None
    store.progress(job.job_id, "segment", 0.2, detail="x")
    store.requeue(job.job_id, "worker lost")
    assert store.get(job.job_id).detail is None
    store.start(job.job_id)
    store.progress(job.job_id, "parse", 0.1, detail="page 1 of 2")
    assert store.succeed(job.job_id)
    assert store.get(job.job_id).detail is None


def test_fail_then_redelivery_and_requeue(store: JobStore):
    job = store.create("ingest")
    store.start(job.job_id)
    store.fail(job.job_id, "parse_error", "not a PDF")
    failed = store.get(job.job_id)
    assert (failed.state, failed.error_code, failed.error) == (FAILED, "parse_error", "not a PDF")
    assert failed.finished_at is not None

    retried = store.start(job.job_id)  # delivered again: runs again, the old error cleared
    assert retried.state == RUNNING and retried.attempts == 2 and retried.error is None and retried.error_code is None

    store.requeue(job.job_id, "retrying after OSError: disk")
    waiting = store.get(job.job_id)
    assert (waiting.state, waiting.stage, waiting.error) == (QUEUED, "retry", "retrying after OSError: disk")
    store.requeue(job.job_id, "again")  # only a running job goes back to the queue
    assert store.get(job.job_id).error == "retrying after OSError: disk"

    ok = store.create("ingest")
    store.start(ok.job_id)
    store.succeed(ok.job_id)
    store.fail(ok.job_id, "internal", "too late")
    assert store.get(ok.job_id).state == SUCCEEDED and store.get(ok.job_id).error is None


def test_cancel_rules(store: JobStore):
    queued = store.create("ingest")
    assert store.cancelled(queued.job_id) is False
    out = store.cancel(queued.job_id)
    assert (out.state, out.stage) == (CANCELLED, "cancelled") and out.finished_at is not None
    assert store.cancelled(queued.job_id) is True

    running = store.create("batch")
    store.start(running.job_id)
    assert store.cancel(running.job_id).state == CANCELLED

    for state in (SUCCEEDED, FAILED):
        ended = store.create("ingest")
        store.start(ended.job_id)
        if state == SUCCEEDED:
            store.succeed(ended.job_id)
        else:
            store.fail(ended.job_id, "x", "y")
        with pytest.raises(JobFinishedError, match=f"already ended \\({state}\\)"):
            store.cancel(ended.job_id)
        assert store.get(ended.job_id).state == state
    with pytest.raises(JobFinishedError):
        store.cancel(queued.job_id)  # cancelled once only

    for kind in ("query", "delete"):
        other = store.create(kind)
        with pytest.raises(InvalidRequestError, match=f"a {kind} job cannot be cancelled"):
            store.cancel(other.job_id)
        assert store.get(other.job_id).state == QUEUED
    with pytest.raises(NotFoundError):
        store.cancel("no-such-job")
    assert store.cancelled("no-such-job") is False

    assert store.start(queued.job_id).state == CANCELLED  # nothing revives a cancelled job
    assert store.succeed(queued.job_id) is False
    store.fail(queued.job_id, "x", "late")
    assert store.get(queued.job_id).state == CANCELLED


def test_batch_items_finish_once_and_the_last_finishes_the_batch(store: JobStore):
    job = store.create("batch", payload={"n_items": 3})
    questions = [{"question": q} for q in ("Who?", "When?", "Where?")]
    store.add_items(job.job_id, questions)
    store.add_items(job.job_id, questions)  # a re-delivered fan-out adds nothing
    assert store.pending_items(job.job_id) == [0, 1, 2]
    assert store.item(job.job_id, 1) == ({"question": "When?"}, None)
    with pytest.raises(NotFoundError):
        store.item(job.job_id, 3)

    assert store.finish_item(job.job_id, 2, {"index": 2, "answer": "there"}) is True
    partial = store.get(job.job_id)
    assert partial.state == RUNNING and partial.stage == "answer" and partial.started_at is not None
    assert partial.progress == pytest.approx(1 / 3, abs=1e-4)
    assert store.finish_item(job.job_id, 2, {"index": 2, "answer": "overwritten"}) is False  # stored once
    assert store.item(job.job_id, 2)[1] == {"index": 2, "answer": "there"}
    assert store.pending_items(job.job_id) == [0, 1]

    assert store.finish_item(job.job_id, 0, {"index": 0, "answer": "someone"}) is True
    assert store.get(job.job_id).state == RUNNING
    assert store.results(job.job_id) == [{"index": 0, "answer": "someone"}, None, {"index": 2, "answer": "there"}]
    assert store.finish_item(job.job_id, 1, {"index": 1, "answer": "then", "text": "é"}) is True
    done = store.get(job.job_id)
    assert (done.state, done.progress, done.stage) == (SUCCEEDED, 1.0, "done") and done.finished_at is not None
    assert store.pending_items(job.job_id) == []
    assert [r["answer"] for r in store.results(job.job_id)] == ["someone", "then", "there"]  # input order
    assert store.results(job.job_id)[1]["text"] == "é"


def test_a_cancelled_batch_stays_cancelled_when_its_last_item_lands(store: JobStore):
    job = store.create("batch", payload={"n_items": 2})
    store.add_items(job.job_id, [{"question": "A?"}, {"question": "B?"}])
    store.finish_item(job.job_id, 0, {"index": 0})
    store.cancel(job.job_id)
    assert store.finish_item(job.job_id, 1, {"index": 1}) is True  # an answer in flight is kept
    assert store.get(job.job_id).state == CANCELLED
    assert store.results(job.job_id) == [{"index": 0}, {"index": 1}]


def test_uploads_put_get_drop(store: JobStore):
    data = bytes(range(256)) * 3  # binary, NUL bytes included
    assert store.upload("sha-a") is None
    store.put_upload("sha-a", data)
    store.put_upload("sha-a", b"other bytes")  # the same hash: the first bytes stay
    assert store.upload("sha-a") == data
    store.put_upload("sha-b", b"b")
    store.drop_upload("sha-a")
    assert store.upload("sha-a") is None and store.upload("sha-b") == b"b"
    store.drop_upload("sha-a")  # dropping twice is harmless


def test_counts_and_ingest_totals(store: JobStore):
    for n_bytes in (100, 50):
        job = store.create("ingest", n_bytes=n_bytes)
        store.start(job.job_id)
        store.succeed(job.job_id)
    store.create("ingest", state=SUCCEEDED, n_bytes=7)  # never started: not in the throughput
    store.create("query")
    counts = store.counts()
    assert counts == {("ingest", SUCCEEDED): 3, ("query", QUEUED): 1}
    assert set(s for _, s in counts) <= set(STATES)
    docs, n_bytes, seconds = store.ingest_totals()
    assert (docs, n_bytes) == (2, 150) and seconds >= 0.0
