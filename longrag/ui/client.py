"""A typed client for the longrag REST API (the only way the UI reaches the service).

The client knows HTTP and JSON, never model code. It takes an optional ready-made
``httpx.Client`` (for tests: Starlette's ``TestClient`` is one) and otherwise builds its own
from a base URL and an optional API key sent as ``X-API-Key``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class APIError(Exception):
    """An error answer from the API (or no answer at all), with a message fit for a user."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``POST /v1/documents`` and ``POST /v1/batch`` return: an id and its job."""

    job_id: str
    doc_id: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    state: str
    progress: float
    stage: str | None = None
    error: str | None = None
    doc_id: str | None = None
    result: Any = None
    detail: str | None = None  # where the running stage is: "page 37 of 1000"

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, job_id: str, data: dict[str, Any]) -> Job:
        return cls(
            job_id=str(data.get("job_id") or job_id),
            state=str(data.get("state", "queued")),
            progress=float(data.get("progress") or 0.0),
            stage=data.get("stage"),
            error=data.get("error"),
            doc_id=data.get("doc_id"),
            result=data.get("result"),
            detail=data.get("detail"),
        )


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    title: str
    filename: str | None = None
    kind: str | None = None
    n_chars: int = 0
    n_chunks: int = 0
    n_sentences: int = 0
    created_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Document:
        known = {"doc_id", "title", "filename", "kind", "n_chars", "n_chunks", "n_sentences", "created_at"}
        return cls(
            doc_id=str(data["doc_id"]),
            title=str(data.get("title") or data.get("filename") or data["doc_id"]),
            filename=data.get("filename"),
            kind=data.get("kind"),
            n_chars=int(data.get("n_chars") or 0),
            n_chunks=int(data.get("n_chunks") or 0),
            n_sentences=int(data.get("n_sentences") or 0),
            created_at=data.get("created_at"),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class EvidenceSpan:
    doc_id: str
    start: int
    end: int
    text: str
    page: int | None = None  # 1-based page (PDF) or slide (PPTX), where the format has pages
    section: str | None = None  # heading path, e.g. "Guide > Install"


@dataclass(frozen=True, slots=True)
class QueryResult:
    answer: str
    evidence: list[EvidenceSpan]
    timings: dict[str, float]
    stats: dict[str, Any]
    mode: str
    answerable: bool = True  # False: the documents do not answer the question

    def shown(self) -> str:
        """The answer as the UI shows it."""
        if not self.answerable:
            return "_The documents do not answer this question._"
        return self.answer or "_(empty answer)_"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueryResult:
        return cls(
            answer=str(data.get("answer", "")),
            evidence=[EvidenceSpan(str(e["doc_id"]), int(e["start"]), int(e["end"]), str(e["text"]),
                                   e.get("page"), e.get("section"))
                      for e in data.get("evidence") or []],
            timings={k: float(v) for k, v in (data.get("timings") or {}).items() if isinstance(v, (int, float))},
            stats=dict(data.get("stats") or {}),
            mode=str(data.get("mode", "")),
            answerable=bool(data.get("answerable", True)),  # an older API has no such key
        )


class StreamReset:
    """Yielded by :meth:`LongragClient.stream_query` when the service restarted the answer
    (a worker died mid-answer and another took over): drop the tokens shown so far."""

    def __repr__(self) -> str:
        return "RESET"


RESET = StreamReset()
StreamItem = str | QueryResult | StreamReset


@dataclass(frozen=True, slots=True)
class SSEvent:
    """One server-sent event: its name (``message`` when unnamed) and its data lines joined."""

    event: str
    data: str


def iter_sse(lines: Iterator[str]) -> Iterator[SSEvent]:
    """Parse a server-sent-events body (the WHATWG format) from its lines."""
    name, data = "", []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data or name:
                yield SSEvent(name or "message", "\n".join(data))
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    if data:
        yield SSEvent(name or "message", "\n".join(data))


def _error_message(resp: httpx.Response) -> tuple[str, str | None]:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or resp.reason_phrase, None
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            return str(err.get("message") or err), err.get("code")
        if isinstance(err, list):  # FastAPI validation errors
            return "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in err), "invalid_request"
        return str(err), body.get("code")
    return str(body), None


class LongragClient:
    """Talks to the longrag REST API.

    Args:
        base_url: The API's root URL (default: ``LONGRAG_API_URL`` or http://127.0.0.1:8000).
        api_key: Sent as ``X-API-Key`` when set (default: ``LONGRAG_API_KEY``).
        timeout: Seconds for ordinary calls; questions and streams get ``query_timeout``.
        query_timeout: Seconds to wait for an answer (generation can be slow on a CPU).
        http: A ready ``httpx.Client`` to use instead of building one (tests).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        query_timeout: float = 600.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("LONGRAG_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LONGRAG_API_KEY") or None
        self.query_timeout = query_timeout
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        if http is None:
            http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        else:
            http.headers.update(headers)
        self._http = http

    # -- plumbing ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LongragClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(f"cannot reach the API at {self.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            message, code = _error_message(resp)
            raise APIError(message, status=resp.status_code, code=code)
        return resp

    # -- health -----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the API's own view of its store, index and broker.

        A degraded service answers 503 with the same body; that body is returned too.
        """
        try:
            return self._request("GET", "/healthz").json()
        except APIError as exc:
            if exc.status == 503:
                return {"status": "degraded", "detail": str(exc)}
            raise

    # -- documents --------------------------------------------------------------------------------
    def upload(self, filename: str, data: bytes, content_type: str | None = None) -> Submitted:
        """Upload one file; returns its document id and the ingestion job."""
        files = {"file": (filename, data, content_type or "application/octet-stream")}
        body = self._request("POST", "/v1/documents", files=files).json()
        return Submitted(job_id=str(body["job_id"]), doc_id=body.get("doc_id"))

    def add_text(self, text: str, title: str | None = None) -> Submitted:
        """Ingest raw text as a document."""
        body = self._request("POST", "/v1/documents", json={"text": text, "title": title}).json()
        return Submitted(job_id=str(body["job_id"]), doc_id=body.get("doc_id"))

    def documents(self) -> list[Document]:
        body = self._request("GET", "/v1/documents").json()
        rows = body.get("documents", body) if isinstance(body, dict) else body
        return [Document.from_json(r) for r in rows]

    def document(self, doc_id: str) -> Document:
        return Document.from_json(self._request("GET", f"/v1/documents/{doc_id}").json())

    def document_text(self, doc_id: str) -> str:
        """The document's parsed text: the text every evidence offset indexes."""
        resp = self._request("GET", f"/v1/documents/{doc_id}/text")
        if resp.headers.get("content-type", "").startswith("application/json"):
            return str(resp.json()["text"])
        return resp.text

    def delete(self, doc_id: str) -> None:
        self._request("DELETE", f"/v1/documents/{doc_id}")

    # -- jobs -------------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        return Job.from_json(job_id, self._request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running ingest or batch job (``DELETE /v1/jobs/{id}``)."""
        return Job.from_json(job_id, self._request("DELETE", f"/v1/jobs/{job_id}").json())

    def wait(
        self,
        job_id: str,
        *,
        on_update: Callable[[Job], None] | None = None,
        timeout: float = 3600.0,
        interval: float = 0.5,
    ) -> Job:
        """Poll a job until it succeeds, fails or is cancelled, reporting each state to ``on_update``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise APIError(f"job {job_id} did not finish within {timeout:.0f} s")
            time.sleep(interval)

    def _modes_body(self) -> Any:
        """``GET /v1/modes`` as JSON; ``None`` when the API has no such route."""
        try:
            return self._request("GET", "/v1/modes").json()
        except APIError as exc:
            if exc.status in (404, 405):
                return None
            raise

    def modes(self) -> list[str]:
        """The answer modes the API offers (``GET /v1/modes``); empty when it does not say."""
        return list(self.mode_options())

    def mode_options(self) -> dict[str, list[str]]:
        """Each mode the API offers with the ``options`` keys it reads (``GET /v1/modes``, one
        request); a mode's keys are empty where the API does not list them (older APIs)."""
        body = self._modes_body()
        rows = body.get("modes", []) if isinstance(body, dict) else body or []
        found = body.get("options") if isinstance(body, dict) else None
        keys = found if isinstance(found, dict) else {}
        names = [str(m.get("name", m)) if isinstance(m, dict) else str(m) for m in rows]
        return {n: [str(k) for k in keys.get(n) or []] for n in names}

    # -- questions --------------------------------------------------------------------------------
    @staticmethod
    def _query_body(question: str, doc_ids: Sequence[str] | None, mode: str | None,
                    options: dict[str, Any] | None, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"question": question, "stream": stream}
        if doc_ids:
            body["doc_ids"] = list(doc_ids)
        if mode:
            body["mode"] = mode
        if options:
            body["options"] = dict(options)
        return body

    @staticmethod
    def _query_path(conversation_id: str | None) -> str:
        return f"/v1/conversations/{conversation_id}/messages" if conversation_id else "/v1/query"

    def query(self, question: str, *, doc_ids: Sequence[str] | None = None, mode: str | None = None,
              options: dict[str, Any] | None = None, conversation_id: str | None = None) -> QueryResult:
        """Ask a question and wait for the whole answer (``options``: the mode's options, as in REST;
        ``conversation_id``: as the next turn of that conversation)."""
        resp = self._request("POST", self._query_path(conversation_id),
                             json=self._query_body(question, doc_ids, mode, options, False), timeout=self.query_timeout)
        return QueryResult.from_json(resp.json())

    def stream_query(
        self, question: str, *, doc_ids: Sequence[str] | None = None, mode: str | None = None,
        options: dict[str, Any] | None = None, conversation_id: str | None = None,
    ) -> Iterator[StreamItem]:
        """Ask a question with ``stream: true``: yields token strings, then the final result.

        A :data:`RESET` item means the service restarted the answer: forget the tokens so far.

        Raises:
            APIError: On an HTTP error or an ``error`` event in the stream.
        """
        body = self._query_body(question, doc_ids, mode, options, True)
        try:
            with self._http.stream("POST", self._query_path(conversation_id), json=body, timeout=self.query_timeout,
                                   headers={"Accept": "text/event-stream"}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    message, code = _error_message(resp)
                    raise APIError(message, status=resp.status_code, code=code)
                for ev in iter_sse(resp.iter_lines()):
                    item = _stream_item(ev)
                    if item is not None:
                        yield item
                        if isinstance(item, QueryResult):
                            return
        except httpx.HTTPError as exc:
            raise APIError(f"the answer stream from {self.base_url} broke: {exc}") from exc
        raise APIError("the answer stream ended without a result")

    # -- conversations ------------------------------------------------------------------------------
    def create_conversation(self, doc_ids: Sequence[str] | None = None, title: str | None = None) -> str:
        """Start a conversation over these documents (none: all); returns its id."""
        body: dict[str, Any] = {"doc_ids": list(doc_ids) if doc_ids else None, "title": title}
        return str(self._request("POST", "/v1/conversations", json=body).json()["conversation_id"])

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        """The conversation with its turns (question, standalone_question, answer JSON)."""
        return self._request("GET", f"/v1/conversations/{conversation_id}").json()

    # -- batch ------------------------------------------------------------------------------------
    def submit_batch(self, questions: Sequence[str | dict[str, Any]]) -> Submitted:
        """Submit a list of questions (strings, or objects with ``question``/``doc_ids``/``mode``/``options``)."""
        body = self._request("POST", "/v1/batch", json=list(questions)).json()
        return Submitted(job_id=str(body["job_id"]), doc_id=None)

    def submit_batch_jsonl(self, filename: str, data: bytes) -> Submitted:
        """Submit a JSONL file of questions, one JSON object (or string) per line."""
        files = {"file": (filename, data, "application/x-ndjson")}
        body = self._request("POST", "/v1/batch", files=files).json()
        return Submitted(job_id=str(body["job_id"]), doc_id=None)

    def batch_results(self, batch_id: str) -> bytes:
        """The results as JSONL, one line per question, in input order."""
        return self._request("GET", f"/v1/batch/{batch_id}/results").content


def _stream_item(ev: SSEvent) -> StreamItem | None:
    """Map one server-sent event to a token string, the final result, a reset, or nothing."""
    if ev.event == "reset":
        return RESET
    if ev.event == "error":
        try:
            payload = json.loads(ev.data)
            message = payload.get("message") or payload.get("error") or ev.data
            code = payload.get("code")
        except (ValueError, AttributeError):
            message, code = ev.data, None
        if isinstance(message, dict):
            message, code = message.get("message", str(message)), message.get("code", code)
        raise APIError(str(message), code=code)
    try:
        payload = json.loads(ev.data) if ev.data else None
    except ValueError:
        payload = None
    if ev.event in {"result", "done", "final", "answer"} or (isinstance(payload, dict) and "evidence" in payload):
        if isinstance(payload, dict):
            return QueryResult.from_json(payload.get("result", payload))
        return None
    if ev.event in {"token", "message"}:
        if isinstance(payload, dict):
            return str(payload.get("token", payload.get("text", "")))
        if isinstance(payload, str):
            return payload
        return ev.data
    return None
