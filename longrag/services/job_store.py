"""The job store: job records, batch items and waiting uploads, in the shared database.

Job records live in a ``jobs`` table of the same database as the corpus (SQLite, or PostgreSQL
when API and worker hosts share no disk), so the API and every worker see one truth. A batch's
questions and answers are rows of ``batch_items``; uploaded bytes wait in ``uploads`` until a
worker, on any host, ingests them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

from longrag.config import Settings, get_settings
from longrag.errors import InvalidRequestError, JobFinishedError, NotFoundError
from longrag.services.db import Database, Executor, open_database

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
CANCELLABLE_KINDS = ("ingest", "batch")


def worker_id() -> str:
    """This process, as it appears in job records: ``pid@host``."""
    return f"{os.getpid()}@{socket.gethostname()}"


def new_id() -> str:
    return uuid.uuid4().hex


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
    detail: str | None = None  # where the running stage is, in words: "page 37 of 1000"

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("payload",)}
        if self.kind == "batch":
            out["n_items"] = self.payload.get("n_items")
        return out


_COLS = ("job_id, kind, state, progress, stage, error, error_code, doc_id, n_bytes, payload, history, "
         "worker, attempts, created_at, started_at, finished_at, detail")


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
                "UPDATE jobs SET state=?, worker=?, attempts=attempts+1, started_at=?, error=NULL, error_code=NULL, "
                "detail=NULL WHERE job_id=? AND state NOT IN (?, ?)",
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

    def progress(self, job_id: str, stage: str, fraction: float, detail: str | None = None) -> None:
        """Record a running job's stage, its overall fraction done and, optionally, where the
        stage is in words (``detail``: "page 37 of 1000"; None clears it)."""
        with self._tx() as c:
            row = c.execute("SELECT history FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            history = json.loads(row[0]) if row else []
            if not history or history[-1]["stage"] != stage:
                history.append({"stage": stage, "progress": round(fraction, 4), "t": round(time.time(), 3)})
            c.execute("UPDATE jobs SET stage=?, progress=?, detail=?, history=? WHERE job_id=? AND state=?",
                      (stage, round(fraction, 4), detail, json.dumps(history), job_id, RUNNING))

    def succeed(self, job_id: str, *, doc_id: str | None = None) -> bool:
        """Mark a job succeeded; False (nothing changed) when it was cancelled meanwhile."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET state=?, progress=1.0, stage='done', detail=NULL, doc_id=COALESCE(?, doc_id), "
                "finished_at=?, error=NULL, error_code=NULL WHERE job_id=? AND state != ?",
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
            c.execute("UPDATE jobs SET state=?, stage='retry', detail=NULL, error=? WHERE job_id=? AND state=?",
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
