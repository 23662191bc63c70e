"""The REST API (FastAPI, served by uvicorn): documents, jobs, questions, conversations, batches,
health, metrics.

With ``LONGRAG_BROKER_URL`` set the API loads no model: ingestion, deletion and questions are
Celery tasks on the ``ingest`` and ``qa`` queues, and streamed tokens come back through Redis
streams. Without a broker the same service functions run on a small thread pool in this process.

Every error is JSON ``{"error": {"code", "message"}}`` with the status of the
:class:`~longrag.errors.LongragError` behind it; a request that fails changes nothing stored.

Modules: :mod:`.app` (the factory, API key, latency), :mod:`.state` (the shared state and its
``Depends``), :mod:`.routes` (one router per resource), :mod:`.schemas` (bodies),
:mod:`.payloads` (uploads and batches read by hand), :mod:`.answers` (questions on workers),
:mod:`.monitoring` (health and metrics), :mod:`.errors` (JSON errors).
"""

from longrag.services.api.app import create_app

__all__ = ["create_app"]
