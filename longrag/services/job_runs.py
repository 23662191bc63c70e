"""The service functions the workers run: ingest, answer, fan out a batch, delete, reindex.

The Celery tasks in ``longrag.workers.tasks`` call these (:func:`run_ingest`,
:func:`run_question`, :func:`run_batch`, :func:`run_batch_item`, :func:`run_delete`,
:func:`run_reindex`); with no broker configured, :class:`~longrag.services.dispatch.LocalDispatcher`
calls the very same functions on a small thread pool inside the API process. All of them are
idempotent: ingestion is keyed by content hash (the corpus dedupes under its write lock), batch
items by ``(job_id, index)``, and a re-delivered job simply runs again to the same end state.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from longrag.config import Settings, get_settings
from longrag.errors import LongragError, NotFoundError
from longrag.services.db import DB_ERRORS
from longrag.services.job_store import (
    CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore, get_jobs, new_id, worker_id,
)
from longrag.services.token_sinks import token_sink

log = logging.getLogger(__name__)


def error_dict(exc: LongragError) -> dict[str, Any]:
    """A failed job's or question's error, as the API reports it."""
    return {"code": exc.code, "message": str(exc), "status": exc.http_status}


# -- uploads: bytes waiting in the database for their ingest job -----------------------------------
def doc_id_for(data: bytes) -> tuple[str, str]:
    """(doc_id, sha256) of uploaded bytes; the corpus derives its ids the same way."""
    sha = hashlib.sha256(data).hexdigest()
    return sha[:16], sha


def save_upload(settings: Settings, data: bytes, sha256: str) -> None:
    """Keep uploaded bytes in the database, where a worker on any host reads them."""
    get_jobs(settings).put_upload(sha256, data)


def read_upload(settings: Settings, sha256: str) -> bytes | None:
    return get_jobs(settings).upload(sha256)


def _drop_upload(jobs: JobStore, job_id: str, sha: str) -> None:
    """Remove the bytes ``job_id`` waited for, unless another live ingest job waits for them too."""
    waiting = [j for j in jobs.find(kind="ingest", sha256=sha) if j.job_id != job_id and j.state in (QUEUED, RUNNING)]
    if not waiting:
        jobs.drop_upload(sha)


# -- ingest ----------------------------------------------------------------------------------------
def run_ingest(settings: Settings, job_id: str) -> dict[str, Any]:
    """Ingest an uploaded document through the real stages, reporting progress on its job.

    Re-delivery is safe: a document whose bytes are already stored is not indexed again.

    Raises:
        Exception: Anything but a :class:`LongragError` (those fail the job) propagates so the
            caller can retry; the job then waits in ``queued``.
    """
    from longrag.services.runtime import get_corpus

    jobs = get_jobs(settings)
    job = jobs.get(job_id)
    if job.state == SUCCEEDED:
        return {"doc_id": job.doc_id, "created": False}
    if job.state == CANCELLED:
        _drop_upload(jobs, job_id, job.payload["sha256"])
        return {"doc_id": None, "cancelled": True}
    jobs.start(job_id)
    corpus = get_corpus(settings)
    sha = job.payload["sha256"]
    existing = corpus.store.doc_by_sha(sha)
    if existing is not None:
        jobs.succeed(job_id, doc_id=existing.doc_id)
        _drop_upload(jobs, job_id, sha)
        return {"doc_id": existing.doc_id, "created": False}
    data = read_upload(settings, sha)
    if data is None:
        jobs.fail(job_id, "upload_missing", "the uploaded bytes are gone (upload again)")
        return {"doc_id": None, "created": False}
    writer = IngestProgress(jobs, job_id)
    try:
        result = corpus.ingest_bytes(data, job.payload.get("filename"), title=job.payload.get("title"),
                                     progress=writer.progress, detail=writer.detail)
    except _Cancelled as stop:
        _drop_upload(jobs, job_id, sha)
        log.info("ingest %s cancelled before %s", job_id, stop)
        return {"doc_id": None, "cancelled": True}
    except LongragError as exc:
        jobs.fail(job_id, exc.code, str(exc))
        _drop_upload(jobs, job_id, sha)
        return {"doc_id": None, "error": error_dict(exc)}
    _drop_upload(jobs, job_id, sha)
    if not jobs.succeed(job_id, doc_id=result.doc_id):  # cancelled after the commit: take it back whole
        if result.created:
            corpus.delete(result.doc_id)
        return {"doc_id": None, "cancelled": True}
    return {"doc_id": result.doc_id, "created": result.created, "chunks": result.n_chunks}


_CHECKPOINTS = frozenset({"parse", "segment", "embed", "index"})
"""Ingest stages before which a cancelled job stops (the document is committed in ``index``)."""

PROGRESS_STEP = 0.05
"""An ingest's progress is stored at once when its fraction has moved on by this much..."""
PROGRESS_EVERY_S = 1.0
"""...and otherwise at most this often while it moves (a long PDF's pages, one by one)."""


class IngestProgress:
    """Stores an ingest's progress on its job record, without a database write per report.

    A new stage is stored at once (after checking whether the job was cancelled), and so is a
    fraction that moved on by :data:`PROGRESS_STEP`. Smaller moves and a new ``detail`` ("page 37
    of 1000") are stored at most every :data:`PROGRESS_EVERY_S` seconds, so a 1,000-page PDF's
    parse shows the page it is on without 1,000 writes.
    """

    def __init__(self, jobs: JobStore, job_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs, self.job_id, self.clock = jobs, job_id, clock
        self._now: tuple[str | None, float, str | None] = (None, -1.0, None)  # stage, fraction, detail
        self._stored: tuple[str | None, float, str | None] = (None, -1.0, None)
        self._stored_at = float("-inf")
        self.writes = 0

    def progress(self, stage: str, fraction: float) -> None:
        """The corpus's report of a stage and the overall fraction done.

        Raises:
            _Cancelled: The job was cancelled before this stage (nothing of it is stored yet).
        """
        new_stage = stage != self._now[0]
        if new_stage and stage in _CHECKPOINTS and self.jobs.cancelled(self.job_id):
            raise _Cancelled(stage)
        self._now = (stage, fraction, None if new_stage else self._now[2])  # a detail belongs to its stage
        self._store(now=new_stage or fraction - self._stored[1] >= PROGRESS_STEP)

    def detail(self, text: str) -> None:
        """Where the current stage is, in words."""
        stage, fraction, _ = self._now
        if stage is not None:
            self._now = (stage, fraction, text)
            self._store(now=False)

    def _store(self, *, now: bool) -> None:
        stage, fraction, detail = self._now
        if stage is None or self._now == self._stored:
            return
        t = self.clock()
        if now or t - self._stored_at >= PROGRESS_EVERY_S:
            self.jobs.progress(self.job_id, stage, fraction, detail=detail)
            self._stored, self._stored_at = self._now, t
            self.writes += 1


class _Cancelled(Exception):
    """Raised from the progress callback to stop a cancelled ingest."""


# -- questions -------------------------------------------------------------------------------------
def question_from(payload: dict[str, Any]):
    """A :class:`~longrag.services.qa.Question` from a request payload."""
    from longrag.services.qa import Question

    return Question(
        payload["question"], doc_ids=payload.get("doc_ids") or None, mode=payload.get("mode") or "plain",
        k=payload.get("k"), max_new_tokens=payload.get("max_new_tokens"), retriever=payload.get("retriever"),
        kv=payload.get("kv"), link_hop=payload.get("link_hop"), options=payload.get("options") or {},
    )


def validate_question(payload: dict[str, Any], settings: Settings | None = None) -> None:
    """Checks an API can make without a model: text present and not too long, mode known."""
    from longrag.services import modes
    from longrag.services.qa import check_mode, check_question_text

    check_question_text(str(payload.get("question") or ""), settings or get_settings())
    modes.load_all()
    check_mode(payload.get("mode") or "plain", payload.get("options"))


def run_question(settings: Settings, request_id: str, payload: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    """Answer one question, publishing ``start`` and ``end`` events (and with ``stream`` each token).

    Returns ``{"ok": True, "result": <ask --json>}`` or ``{"ok": False, "error": {...}}``.
    """
    from longrag.services.runtime import get_pipeline

    sink = token_sink(settings)  # start/end always (the API waits on them); tokens when streaming
    attempt = new_id()[:8]
    me = worker_id()
    jobs = get_jobs(settings)
    _mark_query(jobs, request_id, RUNNING)
    sink.publish(request_id, {"type": "start", "attempt": attempt, "worker": me})
    n = 0

    def on_token(piece: str) -> None:
        nonlocal n
        n += 1
        sink.publish(request_id, {"type": "token", "token": piece, "i": n, "t": time.time(), "attempt": attempt})

    try:
        answer = get_pipeline(settings).ask(question_from(payload), on_token if stream else None)
    except LongragError as exc:
        out = {"ok": False, "error": error_dict(exc), "worker": me}
        _mark_query(jobs, request_id, FAILED, exc)
    else:
        out = {"ok": True, "result": answer.to_dict(), "worker": me}
        _mark_query(jobs, request_id, SUCCEEDED)
    sink.publish(request_id, {"type": "end", "attempt": attempt, **out})
    return out


def _mark_query(jobs: JobStore, request_id: str, state: str, exc: LongragError | None = None) -> None:
    """Queries leave a light job record too (for metrics and to see who holds a question)."""
    try:
        if state == RUNNING:
            jobs.start(request_id)
        elif state == SUCCEEDED:
            jobs.succeed(request_id)
        else:
            jobs.fail(request_id, exc.code if exc else "error", str(exc))
    except DB_ERRORS as err:  # bookkeeping never fails a question
        log.warning("query record %s: %s", request_id, err)


# -- batches: one task fans out, one task per question ---------------------------------------------
def run_batch(settings: Settings, job_id: str, submit_item: Callable[[str, int], None]) -> int:
    """Fan a batch out: one item task per unanswered question, in input order."""
    jobs = get_jobs(settings)
    job = jobs.get(job_id)
    if job.state in (SUCCEEDED, CANCELLED):
        return 0
    pending = jobs.pending_items(job_id)
    for idx in pending:
        submit_item(job_id, idx)
    return len(pending)


def run_batch_item(settings: Settings, job_id: str, idx: int) -> bool:
    """Answer one batch question and store its result line (once). False if already answered."""
    from longrag.services.runtime import get_pipeline

    jobs = get_jobs(settings)
    payload, result = jobs.item(job_id, idx)
    if result is not None or jobs.cancelled(job_id):
        return False
    line: dict[str, Any] = {"index": idx, "question": payload["question"]}
    try:
        line |= get_pipeline(settings).ask(question_from(payload)).to_dict()
    except LongragError as exc:
        line["error"] = {"code": exc.code, "message": str(exc)}
    line["worker"] = worker_id()
    return jobs.finish_item(job_id, idx, line)


# -- documents -------------------------------------------------------------------------------------
def run_delete(settings: Settings, doc_id: str) -> dict[str, Any]:
    """Delete a document (idempotent: deleting a missing document reports ``deleted: False``)."""
    from longrag.services.runtime import get_corpus

    try:
        info = get_corpus(settings).delete(doc_id)
    except NotFoundError:
        return {"doc_id": doc_id, "deleted": False}
    return {"doc_id": info.doc_id, "deleted": True}


def run_reindex(settings: Settings) -> dict[str, int]:
    """Rebuild every FAISS index file from the SQLite vectors (the source of truth)."""
    from longrag.services.runtime import get_corpus

    corpus = get_corpus(settings)
    out = {}
    with corpus._write_lock():
        for kind in list(corpus.vector_builders):
            path = corpus._index_path(kind)
            path.unlink(missing_ok=True)
            corpus._indexes.pop(kind, None)
            out[kind] = corpus.index(kind).ntotal
    return out
