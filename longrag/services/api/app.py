"""The app factory: shared state, the API-key guard, latency metrics, errors, the routers."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from longrag.config import Settings, get_settings
from longrag.errors import UnauthorizedError
from longrag.services import jobs as J
from longrag.services.api.errors import error_response, install_error_handlers
from longrag.services.api.monitoring import make_metrics, route_template
from longrag.services.api.routes import ROUTERS
from longrag.services.api.state import ApiState
from longrag.services.conversations import get_conversations

DESCRIPTION = ("Document QA over long documents: ingestion jobs, grounded answers with exact "
               "evidence offsets, batch jobs. Errors are JSON {error: {code, message}}.")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for these settings (default: from the environment)."""
    settings = settings or get_settings()
    from longrag.services.runtime import configure_logging, get_corpus

    configure_logging()
    app = FastAPI(title="longrag", version="0.1.0", lifespan=lifespan, description=DESCRIPTION)
    corpus = get_corpus(settings)
    jobs = J.get_jobs(settings)
    conversations = get_conversations(settings)
    dispatcher = J.make_dispatcher(settings)
    registry, latency = make_metrics(jobs, dispatcher)
    app.state.api = ApiState(settings=settings, corpus=corpus, jobs=jobs, conversations=conversations,
                             dispatcher=dispatcher, redis=_redis(settings), registry=registry, latency=latency)
    app.middleware("http")(guard_and_time)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _redis(settings: Settings) -> Any | None:
    """An asyncio Redis client on the broker (streamed tokens come back through it)."""
    if not settings.broker_url:
        return None
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(settings.broker_url)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On shutdown: stop the in-process task pools and close the Redis client."""
    yield
    st: ApiState = app.state.api
    shutdown = getattr(st.dispatcher, "shutdown", None)
    if shutdown:
        shutdown()
    if st.redis is not None:
        await st.redis.aclose()


async def guard_and_time(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse a request without the API key (every route but ``/healthz``), then time it."""
    st: ApiState = request.app.state.api
    t0 = time.perf_counter()
    key = st.settings.api_key
    if key and request.url.path != "/healthz":
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            response = error_response(401, UnauthorizedError.code, "missing or wrong API key (header X-API-Key)")
            st.latency.labels(request.method, "unauthorized", "401").observe(time.perf_counter() - t0)
            return response
    response = await call_next(request)
    st.latency.labels(request.method, route_template(request), str(response.status_code)).observe(
        time.perf_counter() - t0)
    return response
