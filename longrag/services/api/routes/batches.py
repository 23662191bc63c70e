"""``/v1/batch``: a batch of questions as one job, its state and its JSONL results."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from longrag.errors import LongragError, NotFoundError, NotReadyError
from longrag.services import jobs as J
from longrag.services.api.answers import check_question
from longrag.services.api.payloads import read_batch
from longrag.services.api.schemas import BATCH_BODY, Accepted
from longrag.services.api.state import ApiState, State

router = APIRouter(tags=["batch"])


@router.post("/v1/batch", status_code=202, response_model=Accepted, openapi_extra=BATCH_BODY)
async def submit_batch(request: Request, st: State) -> Accepted:
    """A batch of questions (JSON list, ``{"questions": [...]}``, or a JSONL upload) -> a job."""
    items = await read_batch(request, st.settings)
    for i, item in enumerate(items):
        try:
            check_question(st, item)
        except LongragError as exc:
            exc.args = (f"question {i}: {exc}",)
            raise
    job = st.jobs.create("batch", payload={"n_items": len(items)})
    st.jobs.add_items(job.job_id, items)
    st.dispatcher.submit(J.TASK_BATCH, job.job_id)
    return Accepted(job_id=job.job_id, state=job.state, n_items=len(items))


@router.get("/v1/batch/{job_id}")
async def get_batch(job_id: str, st: State) -> dict[str, Any]:
    return batch_job(st, job_id).public()


@router.get("/v1/batch/{job_id}/results")
async def batch_results(job_id: str, st: State, partial: bool = False) -> Response:
    """JSONL, one line per question in input order (409 until the batch finished, unless
    ``partial=true``: then only the answered lines, still in order; a cancelled batch gives
    the lines it answered)."""
    job = batch_job(st, job_id)
    if job.state not in (J.SUCCEEDED, J.CANCELLED) and not partial:
        raise NotReadyError(f"batch {job_id} is {job.state} ({job.progress:.0%}); try again later")
    rows = [r for r in st.jobs.results(job_id) if r is not None]
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return Response(body, media_type="application/x-ndjson")


def batch_job(st: ApiState, job_id: str) -> J.Job:
    """The batch job ``job_id`` (404 for a job of another kind)."""
    job = st.jobs.get(job_id)
    if job.kind != "batch":
        raise NotFoundError(f"no batch with id {job_id!r}")
    return job
