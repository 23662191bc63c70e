"""``/v1/documents``: upload (an ingest job), list, read, delete."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from longrag.retrieval.parse import detect_kind
from longrag.services import jobs as J
from longrag.services.api.answers import run_and_wait
from longrag.services.api.payloads import read_upload
from longrag.services.api.schemas import UPLOAD_BODY, Accepted
from longrag.services.api.state import ApiState, State

router = APIRouter(tags=["documents"])


@router.post("/v1/documents", status_code=202, response_model=Accepted, openapi_extra=UPLOAD_BODY)
async def upload_document(request: Request, st: State) -> Accepted:
    """Upload a file (multipart field ``file``) or JSON ``{"text", "title"}``; returns its job.

    Identical bytes give the same ``doc_id`` and are stored once.
    """
    data, filename, title = await read_upload(request, st.settings)
    detect_kind(filename, data)  # 415 for an unknown type, before anything is stored
    doc_id, sha = J.doc_id_for(data)
    return await asyncio.to_thread(submit_ingest, st, data, sha, doc_id, filename, title)


@router.get("/v1/documents")
async def list_documents(st: State) -> list[dict[str, Any]]:
    """Every stored document (the same rows as ``longrag docs --json``)."""
    return [asdict(d) for d in st.corpus.list()]


@router.get("/v1/documents/{doc_id}")
async def get_document(doc_id: str, st: State) -> dict[str, Any]:
    return asdict(st.corpus.get(doc_id))


@router.get("/v1/documents/{doc_id}/text")
async def document_text(doc_id: str, st: State) -> dict[str, Any]:
    """The parsed text that every evidence offset indexes."""
    return {"doc_id": doc_id, "text": st.corpus.text(doc_id)}


@router.delete("/v1/documents/{doc_id}")
async def delete_document(doc_id: str, st: State) -> dict[str, Any]:
    """Delete a document with its chunks, vectors and index entries (a worker task)."""
    st.corpus.get(doc_id)  # 404 before anything happens
    return await run_and_wait(st, J.TASK_DELETE, doc_id)


def submit_ingest(st: ApiState, data: bytes, sha: str, doc_id: str, filename: str | None,
                  title: str | None) -> Accepted:
    """The ingest job of an upload: a finished one for stored bytes, the running one for bytes
    being ingested, else a new job on the ``ingest`` queue."""
    existing = st.corpus.store.doc_by_sha(sha)
    if existing is not None:
        job = st.jobs.create("ingest", state=J.SUCCEEDED, doc_id=existing.doc_id, sha256=sha, n_bytes=0,
                             payload={"sha256": sha, "filename": filename, "title": title, "existing": True})
        return Accepted(job_id=job.job_id, doc_id=existing.doc_id, state=job.state)
    active = [j for j in st.jobs.find(kind="ingest", sha256=sha) if j.state in (J.QUEUED, J.RUNNING)]
    if active:
        return Accepted(job_id=active[0].job_id, doc_id=doc_id, state=active[0].state)
    J.save_upload(st.settings, data, sha)
    job = st.jobs.create("ingest", doc_id=doc_id, sha256=sha, n_bytes=len(data),
                         payload={"sha256": sha, "filename": filename, "title": title})
    st.dispatcher.submit(J.TASK_INGEST, job.job_id, task_id=job.job_id)
    return Accepted(job_id=job.job_id, doc_id=doc_id, state=job.state)
