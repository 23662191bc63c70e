"""The state one API process shares between requests, and the dependency that hands it to routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Histogram

from longrag.config import Settings

if TYPE_CHECKING:
    from longrag.services.conversations import ConversationStore
    from longrag.services.corpus import Corpus
    from longrag.services.dispatch import CeleryDispatcher, LocalDispatcher
    from longrag.services.job_store import JobStore


@dataclass
class ApiState:
    """Everything a route reads: settings, the stores, the task dispatcher and the metrics.

    Attributes:
        settings: the settings the app was built with.
        corpus: the document store and its indexes.
        jobs: ingest, batch and query jobs.
        conversations: conversations and their turns.
        dispatcher: Celery when a broker is configured, an in-process thread pool otherwise.
        redis: an asyncio Redis client on the broker (streamed tokens), None without a broker.
        registry: the Prometheus registry ``/metrics`` serves.
        latency: the request-latency histogram the middleware observes.
    """

    settings: Settings
    corpus: Corpus
    jobs: JobStore
    conversations: ConversationStore
    dispatcher: LocalDispatcher | CeleryDispatcher
    redis: Any | None
    registry: CollectorRegistry
    latency: Histogram


def get_state(request: Request) -> ApiState:
    """The :class:`ApiState` of the app serving ``request``."""
    return request.app.state.api


State = Annotated[ApiState, Depends(get_state)]
