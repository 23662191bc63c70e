"""The Celery tasks (``longrag/workers/tasks.py``) without a broker: their retry configuration,
and the hooks that keep job records in step with Celery's retries and final failures.

The hooks are called on the registered task objects, against a real job store in the test's
data directory; ``Task.apply`` runs a task in this process, retries included.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from longrag.config import get_settings
from longrag.errors import InvalidRequestError, LongragError
from longrag.services.db import TRANSIENT_DB_ERRORS, close_all
from longrag.services.job_store import FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore, get_jobs
from longrag.services.tasknames import (
    QUEUE_OF,
    TASK_BATCH,
    TASK_BATCH_ITEM,
    TASK_DELETE,
    TASK_INGEST,
    TASK_QUESTION,
)
from longrag.workers import tasks
from longrag.workers.celery_app import app


@pytest.fixture()
def store(monkeypatch: pytest.MonkeyPatch) -> JobStore:
    """The job store the hooks find through the settings: SQLite in this test's data directory."""
    monkeypatch.delenv("LONGRAG_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield get_jobs(get_settings())
    close_all()


def test_every_task_name_is_registered_as_a_job_task_on_its_queue():
    for name, queue in QUEUE_OF.items():
        task = app.tasks[name]
        assert isinstance(task, tasks.JobTask)
        assert app.conf.task_routes[name]["queue"] == queue
    assert tasks.ingest.name == TASK_INGEST and tasks.batch_item.name == TASK_BATCH_ITEM


def test_retry_configuration():
    for exc in (OSError, sqlite3.OperationalError, psycopg.OperationalError, RedisConnectionError):
        assert issubclass(exc, tasks.TRANSIENT), exc
    assert set(TRANSIENT_DB_ERRORS) <= set(tasks.TRANSIENT)
    # a product error (bad input, a missing document) is the job's answer, not worth a retry
    assert not issubclass(InvalidRequestError, tasks.TRANSIENT) and not issubclass(LongragError, tasks.TRANSIENT)
    assert not issubclass(sqlite3.IntegrityError, tasks.TRANSIENT) and not issubclass(KeyError, tasks.TRANSIENT)
    for name in QUEUE_OF:
        task = app.tasks[name]
        assert tuple(task.autoretry_for) == tasks.TRANSIENT
        assert task.acks_late is True and task.reject_on_worker_lost is True
        assert task.max_retries == get_settings().task_max_retries == tasks.RETRY["max_retries"]
        assert task.retry_backoff == 2 and task.retry_backoff_max == 60 and task.retry_jitter is True
    assert app.conf.task_acks_late is True and app.conf.task_reject_on_worker_lost is True


def test_on_retry_requeues_an_ingest_or_batch_job(store: JobStore):
    for name, kind in ((TASK_INGEST, "ingest"), (TASK_BATCH, "batch")):
        job = store.create(kind)
        store.start(job.job_id)
        app.tasks[name].on_retry(OSError("disk gone"), "task-1", [job.job_id], {}, None)
        waiting = store.get(job.job_id)
        assert (waiting.state, waiting.stage) == (QUEUED, "retry"), name
        assert waiting.error == "retrying after OSError: disk gone"


def test_on_retry_leaves_other_jobs_alone(store: JobStore):
    query = store.create("query")
    store.start(query.job_id)
    app.tasks[TASK_QUESTION].on_retry(OSError("x"), query.job_id, [query.job_id, {}], {}, None)
    assert store.get(query.job_id).state == RUNNING
    app.tasks[TASK_INGEST].on_retry(OSError("x"), "task-2", [], {}, None)  # no arguments: nothing to do


def test_on_failure_fails_an_ingest_or_batch_job(store: JobStore):
    for name, kind in ((TASK_INGEST, "ingest"), (TASK_BATCH, "batch")):
        job = store.create(kind)
        store.start(job.job_id)
        app.tasks[name].on_failure(RuntimeError("boom"), "task-3", [job.job_id], {}, None)
        failed = store.get(job.job_id)
        assert (failed.state, failed.error_code, failed.error) == (FAILED, "internal", "RuntimeError: boom"), name
    done = store.create("ingest", state=SUCCEEDED)
    app.tasks[TASK_INGEST].on_failure(RuntimeError("late"), "task-4", [done.job_id], {}, None)
    assert store.get(done.job_id).state == SUCCEEDED  # a finished job keeps its end


def test_on_failure_of_a_batch_item_records_its_error_and_can_finish_the_batch(store: JobStore):
    job = store.create("batch", payload={"n_items": 2})
    store.add_items(job.job_id, [{"question": "Who built it?"}, {"question": "When?"}])
    item = app.tasks[TASK_BATCH_ITEM]
    item.on_failure(MemoryError("out of memory"), "task-5", [job.job_id, 1], {}, None)
    assert store.item(job.job_id, 1)[1] == {
        "index": 1, "question": "When?", "error": {"code": "internal", "message": "MemoryError: out of memory"}}
    assert store.pending_items(job.job_id) == [0] and store.get(job.job_id).state == RUNNING

    item.on_failure(ValueError("again"), "task-6", [job.job_id, 1], {}, None)  # stored once
    assert store.item(job.job_id, 1)[1]["error"]["message"] == "MemoryError: out of memory"

    store.finish_item(job.job_id, 0, {"index": 0, "answer": "x"})
    assert store.get(job.job_id).state == SUCCEEDED  # the failed item counts as answered
    assert [r["index"] for r in store.results(job.job_id)] == [0, 1]


def test_on_failure_of_a_delete_touches_no_job(store: JobStore):
    job = store.create("ingest")
    app.tasks[TASK_DELETE].on_failure(RuntimeError("x"), "task-7", [job.job_id], {}, None)
    assert store.get(job.job_id).state == QUEUED and store.counts() == {("ingest", QUEUED): 1}


def test_a_transient_error_is_retried_then_fails_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The job database opens, the corpus cannot (its data directory is under a file): every run
    hits an OSError, is requeued and retried, and after the last retry the job fails."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LONGRAG_DATA_DIR", str(tmp_path / "a-file" / "data"))
    monkeypatch.setenv("LONGRAG_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    get_settings.cache_clear()
    store = get_jobs(get_settings())
    try:
        job = store.create("ingest", payload={"sha256": "0" * 64})
        result = app.tasks[TASK_INGEST].apply(args=[job.job_id])
        assert result.state == "FAILURE" and isinstance(result.result, NotADirectoryError)
        failed = store.get(job.job_id)
        assert failed.attempts == tasks.RETRY["max_retries"] + 1  # the first run and every retry
        assert (failed.state, failed.error_code, failed.stage) == (FAILED, "internal", "retry")
        assert failed.error.startswith("NotADirectoryError:")
    finally:
        close_all()


def test_a_programming_error_is_not_retried(store: JobStore):
    job = store.create("ingest", payload={})  # no sha256: run_ingest raises KeyError
    result = app.tasks[TASK_INGEST].apply(args=[job.job_id])
    assert result.state == "FAILURE" and isinstance(result.result, KeyError)
    failed = store.get(job.job_id)
    assert (failed.state, failed.attempts, failed.error) == (FAILED, 1, "KeyError: 'sha256'")
