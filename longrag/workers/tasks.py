"""Celery tasks: thin wrappers over the service functions in :mod:`longrag.services.job_runs`.

Every task is idempotent (see ``services/job_runs.py``), acknowledged late, and retried a bounded
number of times with exponential backoff on transient errors (I/O, a locked database, the
broker). A worker keeps its models loaded between tasks: the corpus and the QA pipeline are
per-process singletons (``services/runtime.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_process_init
from redis.exceptions import ConnectionError as RedisConnectionError

from longrag.config import get_settings
from longrag.services import job_runs
from longrag.services.db import TRANSIENT_DB_ERRORS
from longrag.services.job_store import get_jobs
from longrag.services.tasknames import (
    TASK_BATCH, TASK_BATCH_ITEM, TASK_DELETE, TASK_INGEST, TASK_QUESTION, TASK_REINDEX,
)
from longrag.workers.celery_app import app

log = logging.getLogger(__name__)

TRANSIENT = (OSError, *TRANSIENT_DB_ERRORS, RedisConnectionError)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": get_settings().task_max_retries,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


class JobTask(Task):
    """Keeps the job record in step with Celery's retries and final failures."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if self.name in (TASK_INGEST, TASK_BATCH) and args:
            get_jobs(get_settings()).requeue(args[0], f"retrying after {type(exc).__name__}: {exc}")

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        settings = get_settings()
        message = f"{type(exc).__name__}: {exc}"
        if self.name in (TASK_INGEST, TASK_BATCH) and args:
            get_jobs(settings).fail(args[0], "internal", message)
        elif self.name == TASK_BATCH_ITEM and len(args) >= 2:
            store = get_jobs(settings)
            question, _ = store.item(args[0], args[1])
            store.finish_item(args[0], args[1], {"index": args[1], "question": question.get("question"),
                                                 "error": {"code": "internal", "message": message}})


@app.task(base=JobTask, name=TASK_INGEST, **RETRY)
def ingest(job_id: str) -> dict[str, Any]:
    """Parse, segment, embed and index one uploaded document (queue ``ingest``)."""
    return job_runs.run_ingest(get_settings(), job_id)


@app.task(base=JobTask, name=TASK_QUESTION, **RETRY)
def question(request_id: str, payload: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    """Answer one question (queue ``qa``); with ``stream`` tokens go to a Redis stream."""
    return job_runs.run_question(get_settings(), request_id, payload, stream=stream)


def _submit_item(job_id: str, idx: int) -> None:
    batch_item.apply_async(args=[job_id, idx], queue="qa")


@app.task(base=JobTask, name=TASK_BATCH, **RETRY)
def batch(job_id: str) -> int:
    """Fan a batch job out over the ``qa`` queue, one task per question."""
    return job_runs.run_batch(get_settings(), job_id, _submit_item)


@app.task(base=JobTask, name=TASK_BATCH_ITEM, **RETRY)
def batch_item(job_id: str, idx: int) -> bool:
    """Answer one batch question and store its result line once."""
    return job_runs.run_batch_item(get_settings(), job_id, idx)


@app.task(base=JobTask, name=TASK_DELETE, **RETRY)
def delete(doc_id: str) -> dict[str, Any]:
    """Delete a document, its chunks, vectors and index entries (queue ``ingest``)."""
    return job_runs.run_delete(get_settings(), doc_id)


@app.task(base=JobTask, name=TASK_REINDEX, **RETRY)
def reindex() -> dict[str, int]:
    """Rebuild the FAISS index files from the SQLite vectors (queue ``ingest``)."""
    return job_runs.run_reindex(get_settings())


def preload(queues: list[str]) -> list[str]:
    """Load the models a worker for these queues needs, once, before taking tasks."""
    from longrag.models.registry import loaded_models
    from longrag.services.runtime import get_corpus, get_pipeline

    settings = get_settings()
    corpus = get_corpus(settings)
    corpus.embedder.dim  # noqa: B018 - loads the embedder
    if "qa" in queues:
        get_pipeline(settings).decoder  # noqa: B018 - loads the decoder
    return loaded_models()


_PRELOAD_QUEUES: list[str] = []


@worker_process_init.connect
def _preload_child(**_: Any) -> None:
    """Prefork pool: each child process loads its models once at start."""
    if _PRELOAD_QUEUES:
        log.info("worker child loaded %s", preload(_PRELOAD_QUEUES))
