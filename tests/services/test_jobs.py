"""The job store and the task functions: cancelling ingest and batch jobs.

Real SQLite job store, the real corpus (MiniLM embedder) and the real ingest stages; the stage
at which a cancel arrives is chosen by cancelling from the job's own progress record.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from http_helpers import DOC

from longrag.config import Settings
from longrag.errors import InvalidRequestError, JobFinishedError, NotFoundError
from longrag.services import jobs as J
from longrag.services.runtime import get_corpus

pytestmark = pytest.mark.usefixtures("each_backend")  # SQLite and PostgreSQL


@pytest.fixture()
def settings(tmp_path: Path, tiny_decoder_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", decoder=str(tiny_decoder_dir), broker_url=None, api_key=None,
                    max_new_tokens=4, answer_checks=False)


def _queued_ingest(settings: Settings, data: bytes) -> str:
    doc_id, sha = J.doc_id_for(data)
    J.save_upload(settings, data, sha)
    job = J.get_jobs(settings).create("ingest", doc_id=doc_id, sha256=sha, n_bytes=len(data),
                                      payload={"sha256": sha, "filename": "cape.txt", "title": None})
    return job.job_id


def _cancel_at(settings: Settings, monkeypatch: pytest.MonkeyPatch, job_id: str, at: str) -> None:
    """Cancel ``job_id`` the moment its ingest records stage ``at``."""
    store = J.get_jobs(settings)
    record = store.progress

    def progress(jid: str, stage: str, fraction: float) -> None:
        record(jid, stage, fraction)
        if jid == job_id and stage == at and not store.cancelled(jid):
            store.cancel(jid)

    monkeypatch.setattr(store, "progress", progress)


def test_cancel_rules(settings: Settings):
    store = J.get_jobs(settings)
    job = store.create("ingest", payload={"sha256": "x"})
    out = store.cancel(job.job_id)
    assert out.state == J.CANCELLED and out.stage == "cancelled" and out.finished_at is not None
    with pytest.raises(JobFinishedError, match="already ended"):
        store.cancel(job.job_id)
    assert store.start(job.job_id).state == J.CANCELLED  # a re-delivered task does not revive it
    assert store.succeed(job.job_id) is False and store.get(job.job_id).state == J.CANCELLED
    store.fail(job.job_id, "x", "late failure")
    assert store.get(job.job_id).state == J.CANCELLED

    done = store.create("ingest", state=J.SUCCEEDED)
    with pytest.raises(JobFinishedError):
        store.cancel(done.job_id)
    assert store.get(done.job_id).state == J.SUCCEEDED
    query = store.create("query")
    with pytest.raises(InvalidRequestError, match="cannot be cancelled"):
        store.cancel(query.job_id)
    assert store.get(query.job_id).state == J.QUEUED
    with pytest.raises(NotFoundError):
        store.cancel("nope")


def test_cancelled_queued_ingest_stores_nothing(settings: Settings):
    job_id = _queued_ingest(settings, DOC.encode())
    J.get_jobs(settings).cancel(job_id)
    out = J.run_ingest(settings, job_id)
    assert out == {"doc_id": None, "cancelled": True}
    assert get_corpus(settings).list() == []
    assert J.read_upload(settings, J.doc_id_for(DOC.encode())[1]) is None
    assert J.get_jobs(settings).get(job_id).state == J.CANCELLED


@pytest.mark.parametrize("at", ["parse", "embed"])
def test_ingest_cancelled_mid_way_stops_before_its_next_stage(settings: Settings, monkeypatch, at: str):
    job_id = _queued_ingest(settings, DOC.encode())
    _cancel_at(settings, monkeypatch, job_id, at)
    assert J.run_ingest(settings, job_id) == {"doc_id": None, "cancelled": True}
    job = J.get_jobs(settings).get(job_id)
    assert job.state == J.CANCELLED
    assert "index" not in [h["stage"] for h in job.history]  # stopped before the commit stage
    corpus = get_corpus(settings)
    assert corpus.list() == [] and corpus.search("lighthouse", k=3) == []


def test_ingest_cancelled_after_its_commit_is_taken_back_whole(settings: Settings, monkeypatch):
    corpus = get_corpus(settings)
    kept = corpus.ingest_bytes(b"Bees were kept behind the abbey. Their honey went to the autumn fair.", "bees.txt")
    job_id = _queued_ingest(settings, DOC.encode())
    _cancel_at(settings, monkeypatch, job_id, "done")  # the document is committed by then
    assert J.run_ingest(settings, job_id) == {"doc_id": None, "cancelled": True}
    assert [d.doc_id for d in corpus.list()] == [kept.doc_id]
    assert all(h.doc_id == kept.doc_id for h in corpus.search("Who built the lighthouse?", k=5))
    # the same bytes ingest again afterwards, whole
    again = _queued_ingest(settings, DOC.encode())
    assert J.run_ingest(settings, again)["created"] is True
    assert corpus.text(J.doc_id_for(DOC.encode())[0]) == DOC


def test_cancelled_batch_keeps_its_answers_and_answers_no_more(settings: Settings):
    get_corpus(settings).ingest_bytes(DOC.encode(), "cape.txt")
    store = J.get_jobs(settings)
    job = store.create("batch", payload={"n_items": 3})
    store.add_items(job.job_id, [{"question": q} for q in ("Who built it?", "When?", "Where?")])
    assert J.run_batch_item(settings, job.job_id, 0) is True
    store.cancel(job.job_id)
    assert J.run_batch_item(settings, job.job_id, 1) is False
    assert J.run_batch(settings, job.job_id, lambda *_: pytest.fail("a cancelled batch fans nothing out")) == 0
    results = store.results(job.job_id)
    assert results[0]["question"] == "Who built it?" and results[1:] == [None, None]
    # an item that was already running when the cancel came keeps its answer, the job stays cancelled
    assert store.finish_item(job.job_id, 2, {"index": 2, "answer": "x"}) is True
    assert store.get(job.job_id).state == J.CANCELLED
