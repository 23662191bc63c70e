"""The job store and the task functions: cancelling ingest and batch jobs, ingest progress.

Real SQLite job store, the real corpus (MiniLM embedder) and the real ingest stages; the stage
at which a cancel arrives is chosen by cancelling from the job's own progress record.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from http_helpers import DOC

from longrag.config import Settings
from longrag.errors import InvalidRequestError, JobFinishedError, NotFoundError
from longrag.services import job_runs
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

    def progress(jid: str, stage: str, fraction: float, detail: str | None = None) -> None:
        record(jid, stage, fraction, detail=detail)
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


# -- ingest progress -------------------------------------------------------------------------------
def _pdf(pages: int) -> bytes:
    """A PDF of ``pages`` pages of a few lines each (reportlab)."""
    import io

    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(612, 792), invariant=1)
    for p in range(1, pages + 1):
        c.setFont("Times-Roman", 11)
        c.drawString(72, 720, f"Page {p} tells of harbour number {p}.")
        c.drawString(72, 706, "The keeper lit the lamp at dusk and put it out at dawn.")
        c.showPage()
    c.save()
    return buf.getvalue()


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_ingest_progress_is_time_throttled_with_the_page_it_is_on(settings: Settings):
    store = J.get_jobs(settings)
    job = store.start(store.create("ingest").job_id)
    clock = _Clock()
    writer = job_runs.IngestProgress(store, job.job_id, clock=clock)
    writer.progress("parse", 0.05)
    assert store.get(job.job_id).stage == "parse"  # a new stage: stored at once
    n = 1000  # a 1,000-page PDF read at 30 pages a second
    seen: list[tuple[float, float, str | None]] = []
    for page in range(1, n + 1):
        clock.t += 1 / 30
        writer.progress("parse", round(0.05 + 0.09 * page / n, 4))
        writer.detail(f"page {page} of {n}")
        now = store.get(job.job_id)
        if not seen or seen[-1][1:] != (now.progress, now.detail):
            seen.append((clock.t, now.progress, now.detail))
    assert 30 <= writer.writes <= 40  # about one a second over 33 s, not one a page
    assert max(b[0] - a[0] for a, b in zip(seen, seen[1:])) <= 1.05  # what a watcher sees moves every second
    for t, fraction, detail in seen[1:]:  # the page stored is the page being read (give or take one)
        page = int(detail.split()[1])
        assert detail == f"page {page} of 1000" and abs(page - 30 * t) <= 2
        assert fraction == pytest.approx(0.05 + 0.09 * page / n, abs=0.001)
    writer.progress("segment", 0.15)  # the next stage: at once, and the page is no longer said
    now = store.get(job.job_id)
    assert (now.stage, now.progress, now.detail) == ("segment", 0.15, None) and writer.writes <= 41
    writer.progress("embed", 0.3)
    writer.progress("embed", 0.36)  # a 5% step is stored at once too
    assert store.get(job.job_id).progress == 0.36


def test_ingest_job_of_a_pdf_reports_its_pages(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(job_runs, "PROGRESS_EVERY_S", 0.0)  # store every report, to see them all
    store = J.get_jobs(settings)
    data = _pdf(12)
    doc_id, sha = J.doc_id_for(data)
    J.save_upload(settings, data, sha)
    job_id = store.create("ingest", doc_id=doc_id, sha256=sha, n_bytes=len(data),
                          payload={"sha256": sha, "filename": "harbours.pdf", "title": None}).job_id
    details: list[tuple[str, str | None]] = []
    record = store.progress

    def progress(jid: str, stage: str, fraction: float, detail: str | None = None) -> None:
        record(jid, stage, fraction, detail=detail)
        details.append((stage, store.get(jid).detail))

    monkeypatch.setattr(store, "progress", progress)
    assert J.run_ingest(settings, job_id)["created"] is True
    said = list(dict.fromkeys(d for s, d in details if s == "parse" and d))
    assert said == [f"page {p} of 12" for p in range(1, 13)] + [f"laying out page {p} of 12" for p in range(1, 13)]
    assert all(d is None for s, d in details if s != "parse")
    done = store.get(job_id)
    assert done.state == J.SUCCEEDED and done.public()["detail"] is None
    assert get_corpus(settings).locate(doc_id, get_corpus(settings).text(doc_id).index("Page 7 tells"))[0] == 7
