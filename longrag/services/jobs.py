"""Jobs: their records, the service functions the workers run, and how work is dispatched.

Job records live in a ``jobs`` table of the same database as the corpus (SQLite, or PostgreSQL
when API and worker hosts share no disk), so the API and every worker see one truth. Uploaded
bytes wait in its ``uploads`` table until a worker, on any host, ingests them.

The service functions here (:func:`run_ingest`, :func:`run_question`, :func:`run_batch`,
:func:`run_batch_item`, :func:`run_delete`, :func:`run_reindex`) are what the Celery tasks in
``longrag.workers.tasks`` call; with no broker configured, :class:`LocalDispatcher` calls the
very same functions on a small thread pool inside the API process. All of them are idempotent:
ingestion is keyed by content hash (the corpus dedupes under its write lock), batch items by
``(job_id, index)``, and a re-delivered job simply runs again to the same end state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from longrag.config import Settings, get_settings
from longrag.errors import InvalidRequestError, JobFinishedError, LongragError, NotFoundError
from longrag.services.db import DB_ERRORS, Database, Executor, open_database

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
CANCELLABLE_KINDS = ("ingest", "batch")

# Celery task names and their queues (`ingest` and `qa`).
TASK_INGEST = "longrag.ingest"
TASK_QUESTION = "longrag.question"
TASK_BATCH = "longrag.batch"
TASK_BATCH_ITEM = "longrag.batch_item"
TASK_DELETE = "longrag.delete"
TASK_REINDEX = "longrag.reindex"
QUEUE_OF: dict[str, str] = {
    TASK_INGEST: "ingest", TASK_DELETE: "ingest", TASK_REINDEX: "ingest",
    TASK_QUESTION: "qa", TASK_BATCH: "qa", TASK_BATCH_ITEM: "qa",
}

def worker_id() -> str:
    """This process, as it appears in job records: ``pid@host``."""
    return f"{os.getpid()}@{socket.gethostname()}"


def new_id() -> str:
    return uuid.uuid4().hex


def doc_id_for(data: bytes) -> tuple[str, str]:
    """(doc_id, sha256) of uploaded bytes; the corpus derives its ids the same way."""
    sha = hashlib.sha256(data).hexdigest()
    return sha[:16], sha


@dataclass
class Job:
    """One job as the API reports it."""

    job_id: str
    kind: str
    state: str
    progress: float
    stage: str | None
    error: str | None
    error_code: str | None
    doc_id: str | None
    n_bytes: int
    payload: dict[str, Any]
    history: list[dict[str, Any]]
    worker: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("payload",)}
        if self.kind == "batch":
            out["n_items"] = self.payload.get("n_items")
        return out


_COLS = ("job_id, kind, state, progress, stage, error, error_code, doc_id, n_bytes, payload, history, "
         "worker, attempts, created_at, started_at, finished_at")


class JobStore:
    """Typed access to the ``jobs`` and ``batch_items`` tables (thread-safe, multi-process)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn = db

    def _tx(self) -> AbstractContextManager[Executor]:
        return self.db.transaction()

    def _row(self, row: tuple) -> Job:
        d = dict(zip([c.strip() for c in _COLS.split(",")], row))
        d["payload"] = json.loads(d["payload"] or "{}")
        d["history"] = json.loads(d["history"] or "[]")
        return Job(**d)

    # -- jobs ------------------------------------------------------------------------------
    def create(self, kind: str, *, job_id: str | None = None, state: str = QUEUED, doc_id: str | None = None,
               sha256: str | None = None, n_bytes: int = 0, payload: dict[str, Any] | None = None) -> Job:
        job_id = job_id or new_id()
        now = time.time()
        done = state in (SUCCEEDED, FAILED)
        with self._tx() as c:
            c.execute(
                "INSERT INTO jobs (job_id, kind, state, progress, stage, doc_id, sha256, n_bytes, payload, "
                "created_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, kind, state, 1.0 if done else 0.0, "done" if done else None, doc_id, sha256,
                 n_bytes, json.dumps(payload or {}), now, now if done else None),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self._conn.execute(f"SELECT {_COLS} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        return self._row(row)

    def find(self, *, kind: str | None = None, state: str | None = None, sha256: str | None = None,
             doc_id: str | None = None) -> list[Job]:
        where, args = [], []
        for col, val in (("kind", kind), ("state", state), ("sha256", sha256), ("doc_id", doc_id)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = f"SELECT {_COLS} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at"
        return [self._row(r) for r in self._conn.execute(sql, args)]

    def start(self, job_id: str) -> Job:
        """Mark a job running (again, when a job is re-delivered) by this process; a succeeded
        or cancelled job stays as it is."""
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET state=?, worker=?, attempts=attempts+1, started_at=?, error=NULL, error_code=NULL "
                "WHERE job_id=? AND state NOT IN (?, ?)",
                (RUNNING, worker_id(), time.time(), job_id, SUCCEEDED, CANCELLED),
            )
        return self.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running ingest or batch job. The worker sees it at its next check:
        an ingest stops before its next stage (or removes the document it has just committed),
        a batch answers no further question and keeps the answers it has.

        Raises:
            NotFoundError: No such job.
            InvalidRequestError: A kind of job that is not cancellable (a query ends with its request).
            JobFinishedError: The job has already ended.
        """
        job = self.get(job_id)
        if job.kind not in CANCELLABLE_KINDS:
            raise InvalidRequestError(f"a {job.kind} job cannot be cancelled (only {', '.join(CANCELLABLE_KINDS)} jobs)")
        with self._tx() as c:
            cur = c.execute("UPDATE jobs SET state=?, stage='cancelled', finished_at=? WHERE job_id=? AND state IN (?, ?)",
                            (CANCELLED, time.time(), job_id, QUEUED, RUNNING))
        if cur.rowcount == 0:
            raise JobFinishedError(f"job {job_id} has already ended ({self.get(job_id).state}); nothing to cancel")
        return self.get(job_id)

    def cancelled(self, job_id: str) -> bool:
        row = self._conn.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return row is not None and row[0] == CANCELLED

    def progress(self, job_id: str, stage: str, fraction: float) -> None:
        with self._tx() as c:
            row = c.execute("SELECT history FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            history = json.loads(row[0]) if row else []
            if not history or history[-1]["stage"] != stage:
                history.append({"stage": stage, "progress": round(fraction, 4), "t": round(time.time(), 3)})
            c.execute("UPDATE jobs SET stage=?, progress=?, history=? WHERE job_id=? AND state=?",
                      (stage, round(fraction, 4), json.dumps(history), job_id, RUNNING))

    def succeed(self, job_id: str, *, doc_id: str | None = None) -> bool:
        """Mark a job succeeded; False (nothing changed) when it was cancelled meanwhile."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET state=?, progress=1.0, stage='done', doc_id=COALESCE(?, doc_id), finished_at=?, "
                "error=NULL, error_code=NULL WHERE job_id=? AND state != ?",
                (SUCCEEDED, doc_id, time.time(), job_id, CANCELLED),
            )
        return cur.rowcount > 0

    def fail(self, job_id: str, code: str, message: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET state=?, error=?, error_code=?, finished_at=? WHERE job_id=? AND state NOT IN (?, ?)",
                      (FAILED, message, code, time.time(), job_id, SUCCEEDED, CANCELLED))

    def requeue(self, job_id: str, message: str) -> None:
        """A transient failure: the job waits for its retry."""
        with self._tx() as c:
            c.execute("UPDATE jobs SET state=?, stage='retry', error=? WHERE job_id=? AND state=?",
                      (QUEUED, message, job_id, RUNNING))

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._conn.execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state").fetchall()
        return {(k, s): n for k, s, n in rows}

    def ingest_totals(self) -> tuple[int, int, float]:
        """(documents ingested by jobs, their bytes, seconds spent) over succeeded ingest jobs."""
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_bytes),0), COALESCE(SUM(finished_at-started_at),0) FROM jobs "
            "WHERE kind='ingest' AND state='succeeded' AND started_at IS NOT NULL"
        ).fetchone()
        return int(row[0]), int(row[1]), float(row[2])

    # -- batch items ------------------------------------------------------------------------
    def add_items(self, job_id: str, questions: list[dict[str, Any]]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO batch_items (job_id, idx, question) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                          [(job_id, i, json.dumps(q)) for i, q in enumerate(questions)])

    def pending_items(self, job_id: str) -> list[int]:
        return [r[0] for r in self._conn.execute(
            "SELECT idx FROM batch_items WHERE job_id=? AND result IS NULL ORDER BY idx", (job_id,))]

    def item(self, job_id: str, idx: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        row = self._conn.execute("SELECT question, result FROM batch_items WHERE job_id=? AND idx=?",
                                 (job_id, idx)).fetchone()
        if row is None:
            raise NotFoundError(f"batch {job_id!r} has no item {idx}")
        return json.loads(row[0]), (json.loads(row[1]) if row[1] else None)

    def finish_item(self, job_id: str, idx: int, result: dict[str, Any]) -> bool:
        """Store an item's result once; finish the batch when it was the last. False if stored before."""
        with self._tx() as c:
            cur = c.execute("UPDATE batch_items SET result=?, worker=? WHERE job_id=? AND idx=? AND result IS NULL",
                            (json.dumps(result, ensure_ascii=False), worker_id(), job_id, idx))
            if cur.rowcount == 0:
                return False
            total, done = c.execute("SELECT COUNT(*), COUNT(result) FROM batch_items WHERE job_id=?",
                                    (job_id,)).fetchone()
            if done >= total:
                c.execute("UPDATE jobs SET state=?, progress=1.0, stage='done', finished_at=? WHERE job_id=? "
                          "AND state != ?", (SUCCEEDED, time.time(), job_id, CANCELLED))
            else:
                c.execute("UPDATE jobs SET state=?, progress=?, stage='answer', "
                          "started_at=COALESCE(started_at, ?) WHERE job_id=? AND state NOT IN (?, ?)",
                          (RUNNING, done / total, time.time(), job_id, SUCCEEDED, CANCELLED))
        return True

    def results(self, job_id: str) -> list[dict[str, Any] | None]:
        return [json.loads(r[0]) if r[0] else None for r in self._conn.execute(
            "SELECT result FROM batch_items WHERE job_id=? ORDER BY idx", (job_id,))]


    # -- uploads: bytes waiting for their ingest job ------------------------------------------
    def put_upload(self, sha256: str, data: bytes) -> None:
        self._conn.execute("INSERT INTO uploads (sha256, data, created_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                           (sha256, data, time.time()))

    def upload(self, sha256: str) -> bytes | None:
        row = self._conn.execute("SELECT data FROM uploads WHERE sha256=?", (sha256,)).fetchone()
        return bytes(row[0]) if row else None

    def drop_upload(self, sha256: str) -> None:
        self._conn.execute("DELETE FROM uploads WHERE sha256=?", (sha256,))


_stores: dict[str, JobStore] = {}
_stores_lock = threading.Lock()


def get_jobs(settings: Settings | None = None) -> JobStore:
    """The per-process job store of the configured database."""
    db = open_database(settings or get_settings())
    with _stores_lock:
        store = _stores.get(db.url)
        if store is None or store.db is not db:
            store = _stores[db.url] = JobStore(db)
        return store


# -- uploads --------------------------------------------------------------------------------
def save_upload(settings: Settings, data: bytes, sha256: str) -> None:
    """Keep uploaded bytes in the database, where a worker on any host reads them."""
    get_jobs(settings).put_upload(sha256, data)


def read_upload(settings: Settings, sha256: str) -> bytes | None:
    return get_jobs(settings).upload(sha256)


# -- token channel: how a worker's streamed tokens reach the API ------------------------------
class TokenSink(Protocol):
    def publish(self, request_id: str, event: dict[str, Any]) -> None: ...


STREAM_PREFIX = "longrag:tokens:"
STREAM_TTL_S = 600


class RedisTokenSink:
    """Appends events to a Redis stream keyed by request id (the API reads it with XREAD)."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)

    def publish(self, request_id: str, event: dict[str, Any]) -> None:
        key = STREAM_PREFIX + request_id
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, {"e": json.dumps(event, ensure_ascii=False)}, maxlen=20000, approximate=True)
        pipe.expire(key, STREAM_TTL_S)
        pipe.execute()


class LocalTokenSink:
    """In-process queues keyed by request id (embedded mode: the task runs in the API)."""

    def __init__(self) -> None:
        self._queues: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()

    def channel(self, request_id: str) -> queue.SimpleQueue:
        with self._lock:
            return self._queues.setdefault(request_id, queue.SimpleQueue())

    def close(self, request_id: str) -> None:
        with self._lock:
            self._queues.pop(request_id, None)

    def publish(self, request_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            q = self._queues.get(request_id)
        if q is not None:
            q.put(event)


LOCAL_SINK = LocalTokenSink()
_redis_sinks: dict[str, RedisTokenSink] = {}


def token_sink(settings: Settings) -> TokenSink:
    if not settings.broker_url:
        return LOCAL_SINK
    if settings.broker_url not in _redis_sinks:
        _redis_sinks[settings.broker_url] = RedisTokenSink(settings.broker_url)
    return _redis_sinks[settings.broker_url]


# -- service functions (what the tasks run) ----------------------------------------------------
def error_dict(exc: LongragError) -> dict[str, Any]:
    return {"code": exc.code, "message": str(exc), "status": exc.http_status}


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
    last = {"stage": None, "p": -1.0}

    def progress(stage: str, fraction: float) -> None:
        if stage != last["stage"] and stage in _CHECKPOINTS and jobs.cancelled(job_id):
            raise _Cancelled(stage)  # before the stage starts: nothing of this document is stored yet
        if stage != last["stage"] or fraction - last["p"] >= 0.05:
            last.update(stage=stage, p=fraction)
            jobs.progress(job_id, stage, fraction)

    try:
        result = corpus.ingest_bytes(data, job.payload.get("filename"),
                                     title=job.payload.get("title"), progress=progress)
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


class _Cancelled(Exception):
    """Raised from the progress callback to stop a cancelled ingest."""


def _drop_upload(jobs: JobStore, job_id: str, sha: str) -> None:
    """Remove the bytes ``job_id`` waited for, unless another live ingest job waits for them too."""
    waiting = [j for j in jobs.find(kind="ingest", sha256=sha) if j.job_id != job_id and j.state in (QUEUED, RUNNING)]
    if not waiting:
        jobs.drop_upload(sha)


def question_from(payload: dict[str, Any]):
    """A :class:`~longrag.services.qa.Question` from a request payload."""
    from longrag.services.qa import Question

    return Question(
        payload["question"], doc_ids=payload.get("doc_ids") or None, mode=payload.get("mode") or "plain",
        k=payload.get("k"), max_new_tokens=payload.get("max_new_tokens"), retriever=payload.get("retriever"),
        kv=payload.get("kv"), link_hop=payload.get("link_hop"), options=payload.get("options") or {},
    )


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


# -- dispatch: Celery when a broker is configured, a thread pool otherwise ---------------------
class Dispatcher(Protocol):
    def submit(self, task: str, *args: Any, task_id: str | None = None) -> Any: ...


@dataclass
class LocalDispatcher:
    """Runs the service functions on one small thread pool per queue inside this process."""

    settings: Settings
    threads: int = 1
    _pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _pool(self, name: str) -> ThreadPoolExecutor:
        with self._lock:
            if name not in self._pools:
                self._pools[name] = ThreadPoolExecutor(self.threads, thread_name_prefix=f"longrag-{name}")
                self._pending[name] = 0
            return self._pools[name]

    def queue_depth(self) -> dict[str, int]:
        with self._lock:
            return {q: self._pending.get(q, 0) for q in ("ingest", "qa")}

    def submit(self, task: str, *args: Any, task_id: str | None = None) -> Future:
        qname = QUEUE_OF[task]
        fn = self._function(task)
        with self._lock:
            self._pending[qname] = self._pending.get(qname, 0) + 1

        def run() -> Any:
            with self._lock:
                self._pending[qname] -= 1
            try:
                return fn(*args)
            except Exception as exc:
                log.exception("task %s%r failed", task, args)
                if task in (TASK_INGEST, TASK_BATCH) and args:
                    get_jobs(self.settings).fail(args[0], "internal", f"{type(exc).__name__}: {exc}")
                raise

        return self._pool(qname).submit(run)

    def _function(self, task: str) -> Callable[..., Any]:
        s = self.settings
        return {
            TASK_INGEST: lambda job_id: run_ingest(s, job_id),
            TASK_QUESTION: lambda rid, payload, stream=False: run_question(s, rid, payload, stream=stream),
            TASK_BATCH: lambda job_id: run_batch(s, job_id, lambda j, i: self.submit(TASK_BATCH_ITEM, j, i)),
            TASK_BATCH_ITEM: lambda job_id, idx: run_batch_item(s, job_id, idx),
            TASK_DELETE: lambda doc_id: run_delete(s, doc_id),
            TASK_REINDEX: lambda: run_reindex(s),
        }[task]

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class CeleryDispatcher:
    """Sends tasks by name to the Celery workers over the configured broker."""

    settings: Settings

    def __post_init__(self) -> None:
        from longrag.workers.celery_app import make_celery

        self.app = make_celery(self.settings)

    def submit(self, task: str, *args: Any, task_id: str | None = None) -> Any:
        return self.app.send_task(task, args=list(args), queue=QUEUE_OF[task], task_id=task_id)

    def queue_depth(self) -> dict[str, int]:
        """Messages waiting in each queue (Redis lists, priority sub-lists included)."""
        with self.app.connection_for_read() as conn:
            client = conn.default_channel.client
            out = {}
            for q in ("ingest", "qa"):
                keys = [q] + [f"{q}\x06\x16{p}" for p in range(1, 10)]
                out[q] = int(sum(client.llen(k) for k in keys))
            return out


def make_dispatcher(settings: Settings) -> LocalDispatcher | CeleryDispatcher:
    if settings.broker_url:
        return CeleryDispatcher(settings)
    return LocalDispatcher(settings, threads=max(1, settings.local_threads))


def validate_question(payload: dict[str, Any], settings: Settings | None = None) -> None:
    """Checks an API can make without a model: text present and not too long, mode known."""
    from longrag.config import get_settings
    from longrag.services import modes
    from longrag.services.qa import check_mode, check_question_text

    check_question_text(str(payload.get("question") or ""), settings or get_settings())
    modes.load_all()
    check_mode(payload.get("mode") or "plain", payload.get("options"))
