"""Celery task names and their queues: what the API sends and what the workers register.

A leaf module (it imports nothing of the project), so the API's dispatcher and
``longrag.workers`` share these names without importing each other.
"""

from __future__ import annotations

QUEUES = ("ingest", "qa")

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
"""The queue each task runs on: ``ingest`` (documents) or ``qa`` (questions)."""
