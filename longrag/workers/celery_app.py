"""The Celery application: Redis broker and result backend, reliable delivery, two queues.

Settings that matter for reliability:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only after it
  finished, so a worker that dies mid-task leaves the message to be re-delivered.
* Redis ``visibility_timeout`` (``LONGRAG_VISIBILITY_TIMEOUT_S``): how long an unacknowledged
  message waits before another worker may take it; ``unacked_restore_interval``
  (``LONGRAG_RESTORE_INTERVAL_S``) how often workers sweep for such messages.
* ``worker_prefetch_multiplier = 1``: a worker reserves one message per process, so a batch
  spreads over every worker instead of piling up on the first.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from longrag.config import Settings, get_settings
from longrag.services.tasknames import QUEUE_OF, QUEUES


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for these settings (the broker URL must be set to send or consume tasks)."""
    settings = settings or get_settings()
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    backend = settings.result_backend_url or broker
    app = Celery("longrag", broker=broker, backend=backend, include=["longrag.workers.tasks"])
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_default_queue="qa",
        task_routes={name: {"queue": q, "routing_key": q} for name, q in QUEUE_OF.items()},
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_celery()
