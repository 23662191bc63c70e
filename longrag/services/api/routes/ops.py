"""``/healthz`` and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from longrag.services.api.monitoring import health
from longrag.services.api.state import State

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz(st: State) -> JSONResponse:
    """Store, index and broker checks; ``models_loaded`` lists the models this process holds."""
    body = await asyncio.to_thread(health, st)
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/metrics")
async def metrics(st: State) -> Response:
    data = await asyncio.to_thread(generate_latest, st.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
