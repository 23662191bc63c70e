"""The REST API (FastAPI, served by uvicorn): documents, jobs, questions, batches, health, metrics.

With ``LONGRAG_BROKER_URL`` set the API loads no model: ingestion, deletion and questions are
Celery tasks on the ``ingest`` and ``qa`` queues, and streamed tokens come back through Redis
streams. Without a broker the same service functions run on a small thread pool in this process.

Every error is JSON ``{"error": {"code", "message"}}`` with the status of the
:class:`~longrag.errors.LongragError` behind it; a request that fails changes nothing stored.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field, ValidationError, field_validator
from sse_starlette import EventSourceResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from longrag.config import Settings, get_settings
from longrag.errors import (
    EmptyDocumentError,
    FileTooLargeError,
    InvalidRequestError,
    LongragError,
    NotFoundError,
    NotReadyError,
    ServiceTimeoutError,
    UnauthorizedError,
    UnsupportedFileTypeError,
    WorkerError,
)
from longrag.retrieval.parse import detect_kind
from longrag.services import jobs as J
from longrag.services.conversations import get_conversations, standalone_question

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an upload


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


# -- request bodies --------------------------------------------------------------------------
class QueryRequest(BaseModel):
    """A question; the answer has the same JSON shape as ``longrag ask --json``."""

    question: str = Field(description="The question (non-empty).")
    doc_ids: list[str] | None = Field(None, description="Restrict retrieval to these documents.")
    mode: str = Field("plain", description="Answer mode: plain, full, and any registered later.")
    k: int | None = Field(None, ge=1, le=200, description="Passages to retrieve.")
    retriever: str | None = Field(None, description="chunk | situated | bm25 | hybrid (default: the mode's).")
    kv: str | None = Field(None, description="full | sentencekv (default: by context length).")
    link_hop: int | None = Field(None, ge=0, le=50, description=(
        "Title-link hop: top passages read for titles of other documents, whose openings join the "
        "results; 0: off (default: LONGRAG_LINK_HOP)."))
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    options: dict[str, Any] | None = Field(None, description=(
        "The mode's options (GET /v1/modes lists the keys each mode reads; others are refused), e.g. "
        'rapid: {"drafter": "llm", "eta": 20, "tail": 0}.'))
    stream: bool = Field(False, description="Stream tokens as server-sent events.")

    @field_validator("question")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the question is empty")
        return v

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude={"stream"}, exclude_none=True)


class ConversationRequest(BaseModel):
    """A new conversation over a document set (none: the whole collection)."""

    doc_ids: list[str] | None = Field(None, description="The documents the conversation asks about.")
    title: str | None = Field(None, max_length=200)


class MessageRequest(QueryRequest):
    """A question in a conversation; ``doc_ids`` default to the conversation's."""


class Accepted(BaseModel):
    job_id: str
    doc_id: str | None = None
    state: str
    n_items: int | None = None


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}, "title": {"type": "string"}}}},
            "application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
                "text": {"type": "string"}, "title": {"type": "string"}}}},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "object"}]}},
                {"type": "object", "properties": {"questions": {"type": "array"}}},
            ]}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "JSONL, one question a line"}}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


# -- metrics ------------------------------------------------------------------------------------
class _ServiceCollector:
    """Job counts, queue depth and ingest throughput, read at scrape time from the shared store."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self):
        jobs: J.JobStore = self.state.jobs
        g = GaugeMetricFamily("longrag_jobs", "Jobs by kind and state", labels=["kind", "state"])
        counts = jobs.counts()
        for kind in ("ingest", "batch", "query"):
            for state in J.STATES:
                g.add_metric([kind, state], counts.get((kind, state), 0))
        yield g
        q = GaugeMetricFamily("longrag_queue_depth", "Tasks waiting per queue", labels=["queue"])
        try:
            for name, n in self.state.dispatcher.queue_depth().items():
                q.add_metric([name], n)
        except Exception as exc:  # the broker may be down: report what we can
            log.warning("queue depth unavailable: %s", exc)
        yield q
        docs, nbytes, secs = jobs.ingest_totals()
        yield CounterMetricFamily("longrag_ingested_documents", "Documents ingested by jobs", value=docs)
        yield CounterMetricFamily("longrag_ingested_bytes", "Bytes ingested by jobs", value=nbytes)
        yield CounterMetricFamily("longrag_ingest_seconds", "Seconds spent ingesting", value=secs)
        yield GaugeMetricFamily("longrag_ingest_bytes_per_second", "Ingest throughput over all ingest jobs",
                                value=(nbytes / secs) if secs > 0 else 0.0)


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


# -- waiting for workers ----------------------------------------------------------------------
async def _events_local(state: Any, rid: str, deadline: float) -> AsyncIterator[dict[str, Any]]:
    ch = J.LOCAL_SINK.channel(rid)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceTimeoutError(f"no answer within {state.settings.query_timeout_s:.0f} s")
            try:
                event = await asyncio.to_thread(ch.get, True, min(left, 1.0))
            except queue.Empty:
                continue
            yield event
            if event.get("type") == "end":
                return
    finally:
        J.LOCAL_SINK.close(rid)


async def _events_redis(state: Any, rid: str, deadline: float) -> AsyncIterator[dict[str, Any]]:
    key = J.STREAM_PREFIX + rid
    last = "0-0"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceTimeoutError(f"no answer within {state.settings.query_timeout_s:.0f} s")
            got = await state.redis.xread({key: last}, block=int(min(left, 1.0) * 1000) or 1, count=256)
            for _key, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = json.loads(fields[b"e"])
                    yield event
                    if event.get("type") == "end":
                        return
    finally:
        await state.redis.delete(key)


def _events(state: Any, rid: str, deadline: float) -> AsyncIterator[dict[str, Any]]:
    return _events_redis(state, rid, deadline) if state.settings.broker_url else _events_local(state, rid, deadline)


def _raise_for(out: dict[str, Any]) -> dict[str, Any]:
    if out.get("ok"):
        return out["result"]
    err = out.get("error") or {}
    exc = LongragError(err.get("message", "the worker failed"))
    exc.code = err.get("code", "error")
    exc.http_status = int(err.get("status", 500))
    raise exc


# -- the app ----------------------------------------------------------------------------------
def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for these settings (default: from the environment)."""
    settings = settings or get_settings()
    from longrag.services.runtime import configure_logging, get_corpus

    configure_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        shutdown = getattr(app.state.dispatcher, "shutdown", None)
        if shutdown:
            shutdown()
        if app.state.redis is not None:
            await app.state.redis.aclose()

    app = FastAPI(
        title="longrag", version="0.1.0", lifespan=lifespan,
        description="Document QA over long documents: ingestion jobs, grounded answers with exact "
                    "evidence offsets, batch jobs. Errors are JSON {error: {code, message}}.",
    )
    st = app.state
    st.settings = settings
    st.corpus = get_corpus(settings)
    st.jobs = J.get_jobs(settings)
    st.conversations = get_conversations(settings.db_path)
    st.dispatcher = J.make_dispatcher(settings)
    st.redis = None
    if settings.broker_url:
        import redis.asyncio as aioredis

        st.redis = aioredis.Redis.from_url(settings.broker_url)
    registry = CollectorRegistry()
    latency = Histogram("longrag_request_seconds", "Request latency", ["method", "route", "status"],
                        registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
    registry.register(_ServiceCollector(st))
    st.registry = registry

    # -- middleware: API key, then latency ----------------------------------------------------
    @app.middleware("http")
    async def guard_and_time(request: Request, call_next):
        t0 = time.perf_counter()
        if settings.api_key and request.url.path != "/healthz":
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                response = _error(401, UnauthorizedError.code, "missing or wrong API key (header X-API-Key)")
                latency.labels(request.method, "unauthorized", "401").observe(time.perf_counter() - t0)
                return response
        response = await call_next(request)
        latency.labels(request.method, _route_template(request), str(response.status_code)).observe(
            time.perf_counter() - t0)
        return response

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(LongragError)
    async def _longrag_error(_: Request, exc: LongragError) -> JSONResponse:
        return _error(exc.http_status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        code = "malformed_json" if any(e.get("type") == "json_invalid" for e in exc.errors()) else "invalid_request"
        return _error(422, code, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    # -- documents ------------------------------------------------------------------------------
    @app.post("/v1/documents", status_code=202, response_model=Accepted, tags=["documents"],
              openapi_extra=_UPLOAD_BODY)
    async def upload_document(request: Request) -> Accepted:
        """Upload a file (multipart field ``file``) or JSON ``{"text", "title"}``; returns its job.

        Identical bytes give the same ``doc_id`` and are stored once.
        """
        data, filename, title = await _read_upload(request, settings)
        detect_kind(filename, data)  # 415 for an unknown type, before anything is stored
        doc_id, sha = J.doc_id_for(data)
        return await asyncio.to_thread(_submit_ingest, st, data, sha, doc_id, filename, title)

    @app.get("/v1/documents", tags=["documents"])
    async def list_documents() -> list[dict[str, Any]]:
        """Every stored document (the same rows as ``longrag docs --json``)."""
        return [asdict(d) for d in st.corpus.list()]

    @app.get("/v1/documents/{doc_id}", tags=["documents"])
    async def get_document(doc_id: str) -> dict[str, Any]:
        return asdict(st.corpus.get(doc_id))

    @app.get("/v1/documents/{doc_id}/text", tags=["documents"])
    async def document_text(doc_id: str) -> dict[str, Any]:
        """The parsed text that every evidence offset indexes."""
        return {"doc_id": doc_id, "text": st.corpus.text(doc_id)}

    @app.delete("/v1/documents/{doc_id}", tags=["documents"])
    async def delete_document(doc_id: str) -> dict[str, Any]:
        """Delete a document with its chunks, vectors and index entries (a worker task)."""
        st.corpus.get(doc_id)  # 404 before anything happens
        return await _run_and_wait(st, J.TASK_DELETE, doc_id)

    # -- jobs -----------------------------------------------------------------------------------
    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """State (queued | running | succeeded | failed | cancelled), progress 0..1, stage, error."""
        return st.jobs.get(job_id).public()

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running ingest or batch job (409 ``job_finished`` once it ended).
        An ingest stops before its next stage and stores nothing; a batch answers no further
        question and keeps the answers it has (``GET /v1/batch/{id}/results``)."""
        return (await asyncio.to_thread(st.jobs.cancel, job_id)).public()

    # -- questions ------------------------------------------------------------------------------
    @app.get("/v1/modes", tags=["query"])
    async def list_modes() -> dict[str, Any]:
        """The modes, and the ``options`` keys each one reads."""
        from longrag.services import modes
        from longrag.services.qa import MODE_OPTIONS, MODES

        modes.load_all()
        return {"modes": sorted(MODES), "options": {m: sorted(MODE_OPTIONS.get(m, ())) for m in sorted(MODES)}}

    @app.post("/v1/query", tags=["query"])
    async def query(body: QueryRequest, request: Request):
        """Answer a question: answer, evidence (doc id, char start/end, text), timings, stats, mode.

        With ``stream: true`` the answer comes as server-sent events: ``token`` events
        (``{"token"}``), then one ``result`` event with the full JSON (or an ``error`` event). A
        ``reset`` event means a worker died and another restarted the answer.
        """
        return await _answer(st, body.payload(), stream=body.stream)

    # -- conversations ----------------------------------------------------------------------------
    @app.post("/v1/conversations", status_code=201, tags=["conversations"])
    async def create_conversation(body: ConversationRequest) -> dict[str, Any]:
        """Start a conversation; follow-up questions go to ``POST /v1/conversations/{id}/messages``."""
        doc_ids = st.corpus.check_docs(body.doc_ids) if body.doc_ids else []
        return (await asyncio.to_thread(st.conversations.create, doc_ids, body.title)).public()

    @app.get("/v1/conversations/{conversation_id}", tags=["conversations"])
    async def get_conversation(conversation_id: str) -> dict[str, Any]:
        """The conversation and its turns: each question, its standalone rewrite and the answer JSON."""
        return (await asyncio.to_thread(st.conversations.get, conversation_id)).public()

    @app.post("/v1/conversations/{conversation_id}/messages", tags=["conversations"])
    async def conversation_message(conversation_id: str, body: MessageRequest):
        """Ask in a conversation: the question is rewritten to stand alone from the turns before it
        (``stats.standalone_question``), answered like ``POST /v1/query`` (streamed with ``stream``),
        and stored as the next turn (``stats.turn``)."""
        conv = await asyncio.to_thread(st.conversations.get, conversation_id)
        payload = body.payload()
        standalone = standalone_question(conv.turns, body.question)
        payload["question"] = standalone
        if "doc_ids" not in payload and conv.doc_ids:
            # documents deleted since the conversation began are left out; its stored turns stay
            payload["doc_ids"] = [d for d in conv.doc_ids if st.corpus.store.exists(d)] or conv.doc_ids

        def store(result: dict[str, Any]) -> dict[str, Any]:
            return st.conversations.record(conversation_id, body.question, standalone, result)

        return await _answer(st, payload, stream=body.stream, on_result=store)

    # -- batches --------------------------------------------------------------------------------
    @app.post("/v1/batch", status_code=202, response_model=Accepted, tags=["batch"], openapi_extra=_BATCH_BODY)
    async def submit_batch(request: Request) -> Accepted:
        """A batch of questions (JSON list, ``{"questions": [...]}``, or a JSONL upload) -> a job."""
        items = await _read_batch(request, settings)
        for i, item in enumerate(items):
            try:
                _check_question(st, item)
            except LongragError as exc:
                exc.args = (f"question {i}: {exc}",)
                raise
        job = st.jobs.create("batch", payload={"n_items": len(items)})
        st.jobs.add_items(job.job_id, items)
        st.dispatcher.submit(J.TASK_BATCH, job.job_id)
        return Accepted(job_id=job.job_id, state=job.state, n_items=len(items))

    @app.get("/v1/batch/{job_id}", tags=["batch"])
    async def get_batch(job_id: str) -> dict[str, Any]:
        return _batch_job(st, job_id).public()

    @app.get("/v1/batch/{job_id}/results", tags=["batch"])
    async def batch_results(job_id: str, partial: bool = False) -> Response:
        """JSONL, one line per question in input order (409 until the batch finished, unless
        ``partial=true``: then only the answered lines, still in order; a cancelled batch gives
        the lines it answered)."""
        job = _batch_job(st, job_id)
        if job.state not in (J.SUCCEEDED, J.CANCELLED) and not partial:
            raise NotReadyError(f"batch {job_id} is {job.state} ({job.progress:.0%}); try again later")
        rows = [r for r in st.jobs.results(job_id) if r is not None]
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Response(body, media_type="application/x-ndjson")

    # -- health and metrics ------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """Store, index and broker checks; ``models_loaded`` lists the models this process holds."""
        body = await asyncio.to_thread(_health, st)
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        data = await asyncio.to_thread(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app


# -- helpers ------------------------------------------------------------------------------------
async def _read_upload(request: Request, settings: Settings) -> tuple[bytes, str | None, str | None]:
    limit = settings.max_file_bytes
    ctype = request.headers.get("content-type", "").lower()
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise FileTooLargeError(f"the upload is {length} bytes; the limit is {limit} (LONGRAG_MAX_FILE_BYTES)")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequestError("a multipart upload needs a file in the field 'file'")
        data = await file.read(limit + 1)
        title = form.get("title")
        filename, title = file.filename, (title if isinstance(title, str) and title.strip() else None)
    elif ctype.startswith("application/json"):
        raw = await request.body()
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequestError(f"malformed JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InvalidRequestError('JSON uploads look like {"text": "...", "title": "..."}')
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidRequestError("title must be a string")
        data, filename = obj["text"].encode("utf-8"), None
    else:
        raise UnsupportedFileTypeError(
            f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with a 'file' "
            'field or application/json {"text", "title"}')
    if len(data) > limit:
        raise FileTooLargeError(f"the document is over {limit} bytes (LONGRAG_MAX_FILE_BYTES)")
    if not data.strip():
        raise EmptyDocumentError("the document is empty")
    return data, filename, title


def _submit_ingest(st: Any, data: bytes, sha: str, doc_id: str, filename: str | None,
                   title: str | None) -> Accepted:
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


def _check_question(st: Any, payload: dict[str, Any]) -> None:
    J.validate_question(payload, st.settings)
    for d in payload.get("doc_ids") or []:
        if not st.corpus.store.exists(d):
            # a document is committed whole at the end of its ingest: until then it has no index
            pending = [j for j in st.jobs.find(kind="ingest", doc_id=d) if j.state in (J.QUEUED, J.RUNNING)]
            if pending:
                raise NotReadyError(
                    f"document {d!r} is still being ingested (job {pending[0].job_id}, "
                    f"{pending[0].state}, {pending[0].progress:.0%}); ask again when the job has succeeded"
                )
            raise NotFoundError(f"no document with id {d!r}")


def _normalise_item(item: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    if isinstance(item, str):
        item = {"question": item}
    if not isinstance(item, dict) or not isinstance(item.get("question"), str):
        raise InvalidRequestError('each batch item is a string or an object with a "question" string')
    allowed = set(QueryRequest.model_fields) - {"stream"}
    out = {**{k: v for k, v in defaults.items() if k in allowed},
           **{k: v for k, v in item.items() if k in allowed}}
    try:
        QueryRequest(**out)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first.get("loc", ()))
        raise InvalidRequestError(f"{field}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}") from None
    return out


async def _read_batch(request: Request, settings: Settings) -> list[dict[str, Any]]:
    ctype = request.headers.get("content-type", "").lower()
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_file_bytes + MULTIPART_SLACK:
        raise FileTooLargeError(f"the batch is over {settings.max_file_bytes} bytes (LONGRAG_MAX_FILE_BYTES)")
    defaults: dict[str, Any] = {}
    if ctype.startswith("application/json"):
        try:
            obj = json.loads(await request.body())
        except ValueError as exc:
            raise InvalidRequestError(f"malformed JSON: {exc}") from None
        if isinstance(obj, dict):
            defaults = {k: v for k, v in obj.items() if k != "questions"}
            obj = obj.get("questions")
        if not isinstance(obj, list):
            raise InvalidRequestError('send a JSON list of questions, or {"questions": [...]}')
        raw_items = obj
    elif ctype.startswith("multipart/form-data") or ctype.startswith("application/x-ndjson") \
            or ctype.startswith("application/jsonl"):
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10)
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidRequestError("a multipart batch needs a JSONL file in the field 'file'")
            data = await file.read(settings.max_file_bytes + 1)
        else:
            data = await request.body()
        if len(data) > settings.max_file_bytes:
            raise FileTooLargeError(f"the batch is over {settings.max_file_bytes} bytes (LONGRAG_MAX_FILE_BYTES)")
        raw_items = []
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw_items.append(json.loads(line))
            except ValueError as exc:
                raise InvalidRequestError(f"malformed JSON on line {n}: {exc}") from None
    else:
        raise UnsupportedFileTypeError(
            f"unsupported content type {ctype or '(none)'!r}: send a JSON list, or JSONL (multipart 'file' "
            "or application/x-ndjson)")
    if not raw_items:
        raise InvalidRequestError("the batch has no questions")
    out = []
    for i, item in enumerate(raw_items):
        try:
            out.append(_normalise_item(item, defaults))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"question {i}: {exc}") from None
    return out


def _batch_job(st: Any, job_id: str) -> J.Job:
    job = st.jobs.get(job_id)
    if job.kind != "batch":
        raise NotFoundError(f"no batch with id {job_id!r}")
    return job


def _give_up(st: Any, rid: str) -> None:
    st.jobs.fail(rid, "timeout", "the client stopped waiting")
    if st.settings.broker_url:
        st.dispatcher.app.control.revoke(rid)


async def _answer(st: Any, payload: dict[str, Any], *, stream: bool,
                  on_result: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Response:
    """Answer ``payload`` on a worker: JSON, or server-sent events with ``stream``. ``on_result``
    sees (and may extend) the answer JSON before it is returned (a conversation stores its turn)."""
    _check_question(st, payload)
    rid = J.new_id()
    deadline = time.monotonic() + st.settings.query_timeout_s
    if stream:
        if not st.settings.broker_url:
            J.LOCAL_SINK.channel(rid)  # register before the task can publish
        st.jobs.create("query", job_id=rid, payload=payload)
        st.dispatcher.submit(J.TASK_QUESTION, rid, payload, True, task_id=rid)
        return EventSourceResponse(_sse(st, rid, deadline, on_result), ping=15, headers={"X-Request-ID": rid})
    st.jobs.create("query", job_id=rid, payload=payload)
    future = st.dispatcher.submit(J.TASK_QUESTION, rid, payload, False, task_id=rid)
    if st.settings.broker_url:
        out = None
        try:
            async for event in _events(st, rid, deadline):
                if event.get("type") == "end":
                    out = event
        except ServiceTimeoutError:
            await asyncio.to_thread(_give_up, st, rid)
            raise
    else:
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(future), st.settings.query_timeout_s)
        except TimeoutError:
            await asyncio.to_thread(_give_up, st, rid)
            raise ServiceTimeoutError(f"no answer within {st.settings.query_timeout_s:.0f} s") from None
    result = _raise_for(out)
    if on_result is not None:
        result = await asyncio.to_thread(on_result, result)
    return JSONResponse(result, headers={"X-Request-ID": rid})


async def _run_and_wait(st: Any, task: str, *args: Any) -> dict[str, Any]:
    """Run a short task on its queue and wait for its return value (bounded)."""
    timeout = st.settings.query_timeout_s
    handle = st.dispatcher.submit(task, *args)
    if not st.settings.broker_url:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(handle), timeout)
        except TimeoutError:
            raise ServiceTimeoutError(f"{task} did not finish within {timeout:.0f} s") from None
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(handle.ready):
        if time.monotonic() > deadline:
            raise ServiceTimeoutError(f"{task} did not finish within {timeout:.0f} s")
        await asyncio.sleep(0.05)
    if handle.failed():
        raise WorkerError(f"{task} failed on the worker: {handle.result!r}")
    return handle.result


async def _sse(st: Any, rid: str, deadline: float,
               on_result: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> AsyncIterator[dict[str, str]]:
    attempt = None
    try:
        async for event in _events(st, rid, deadline):
            kind = event.get("type")
            if event.get("attempt") and attempt and event["attempt"] != attempt and kind in ("start", "token"):
                yield {"event": "reset", "data": json.dumps({"reason": "the worker restarted the answer"})}
            attempt = event.get("attempt") or attempt
            if kind == "token":
                yield {"event": "token", "data": json.dumps(
                    {"token": event["token"], "i": event.get("i"), "t": event.get("t")}, ensure_ascii=False)}
            elif kind == "end":
                if event.get("ok"):
                    result = event["result"]
                    if on_result is not None:
                        result = await asyncio.to_thread(on_result, result)
                    yield {"event": "result", "data": json.dumps(result, ensure_ascii=False)}
                else:
                    err = event.get("error") or {}
                    yield {"event": "error", "data": json.dumps(
                        {"code": err.get("code", "error"), "message": err.get("message", "")})}
                return
    except ServiceTimeoutError as exc:
        await asyncio.to_thread(_give_up, st, rid)
        yield {"event": "error", "data": json.dumps({"code": exc.code, "message": str(exc)})}


def _index_health(st: Any) -> dict[str, Any]:
    import faiss

    corpus = st.corpus
    out: dict[str, Any] = {}
    for kind in corpus.vector_builders:
        expected = corpus.store.count_vectors(kind)
        path = corpus._index_path(kind)
        if not path.exists():
            out[kind] = {"status": "ok" if expected == 0 else "stale", "vectors": expected, "indexed": 0}
            continue
        n = faiss.read_index(str(path)).ntotal
        out[kind] = {"status": "ok" if n == expected else "stale", "vectors": expected, "indexed": int(n)}
    return out


def _health(st: Any) -> dict[str, Any]:
    from longrag.models.registry import loaded_models

    body: dict[str, Any] = {"mode": "celery" if st.settings.broker_url else "embedded"}
    ok = True
    try:
        body["documents"] = len(st.corpus.list())
        body["jobs"] = {f"{k}:{s}": n for (k, s), n in st.jobs.counts().items()}
        body["store"] = "ok"
    except Exception as exc:
        ok, body["store"] = False, f"error: {exc}"
    try:
        body["index"] = _index_health(st)  # a stale index is rebuilt on the next search: still ok
    except Exception as exc:
        ok, body["index"] = False, f"error: {exc}"
    if st.settings.broker_url:
        try:
            with st.dispatcher.app.connection_for_read() as conn:
                conn.default_channel.client.ping()
            body["broker"] = "ok"
        except Exception as exc:
            ok, body["broker"] = False, f"error: {exc}"
    else:
        body["broker"] = "embedded (no broker configured)"
    body["models_loaded"] = loaded_models()
    body["status"] = "ok" if ok else "degraded"
    return body
