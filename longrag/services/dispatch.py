"""Dispatch: Celery when a broker is configured, a thread pool inside the API otherwise.

Both send a task by its name (:mod:`longrag.services.tasknames`). The thread pool calls the
service functions of :mod:`longrag.services.job_runs` directly; the Celery dispatcher builds
its app from ``longrag.workers.celery_app`` (imported when one is made), which itself imports
nothing of this package but the task names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from longrag.config import Settings
from longrag.services.job_runs import run_batch, run_batch_item, run_delete, run_ingest, run_question, run_reindex
from longrag.services.job_store import get_jobs
from longrag.services.tasknames import (
    QUEUE_OF, QUEUES, TASK_BATCH, TASK_BATCH_ITEM, TASK_DELETE, TASK_INGEST, TASK_QUESTION, TASK_REINDEX,
)

log = logging.getLogger(__name__)


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
            return {q: self._pending.get(q, 0) for q in QUEUES}

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
            for q in QUEUES:
                keys = [q] + [f"{q}\x06\x16{p}" for p in range(1, 10)]
                out[q] = int(sum(client.llen(k) for k in keys))
            return out


def make_dispatcher(settings: Settings) -> LocalDispatcher | CeleryDispatcher:
    if settings.broker_url:
        return CeleryDispatcher(settings)
    return LocalDispatcher(settings, threads=max(1, settings.local_threads))
