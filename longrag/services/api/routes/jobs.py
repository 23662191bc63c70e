"""``/v1/jobs/{job_id}``: the state of any job, and cancelling one."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from longrag.services.api.state import State

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, st: State) -> dict[str, Any]:
    """State (queued | running | succeeded | failed | cancelled), progress 0..1, stage, error."""
    return st.jobs.get(job_id).public()


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(job_id: str, st: State) -> dict[str, Any]:
    """Cancel a queued or running ingest or batch job (409 ``job_finished`` once it ended).
    An ingest stops before its next stage and stores nothing; a batch answers no further
    question and keeps the answers it has (``GET /v1/batch/{id}/results``)."""
    return (await asyncio.to_thread(st.jobs.cancel, job_id)).public()
