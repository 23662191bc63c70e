"""Questions answered on a worker: checks before queueing, then waiting for the answer.

A question becomes a ``query`` job and a task on the ``qa`` queue. Its events (tokens, then one
``end`` event with the answer JSON or the error) come back through the in-process sink without
a broker, or a Redis stream with one. The API waits at most ``LONGRAG_QUERY_TIMEOUT_S``; a
question the client stopped waiting for is marked failed (and revoked on Celery).
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from longrag.errors import LongragError, NotFoundError, NotReadyError, ServiceTimeoutError, WorkerError
from longrag.services import jobs as J
from longrag.services.api.state import ApiState

OnResult = Callable[[dict[str, Any]], dict[str, Any]]


def check_question(st: ApiState, payload: dict[str, Any]) -> None:
    """Refuse a question before it is queued: bad text or mode (422), unknown (404) or still
    ingesting (409) documents."""
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


async def answer(st: ApiState, payload: dict[str, Any], *, stream: bool,
                 on_result: OnResult | None = None) -> Response:
    """Answer ``payload`` on a worker: JSON, or server-sent events with ``stream``. ``on_result``
    sees (and may extend) the answer JSON before it is returned (a conversation stores its turn)."""
    check_question(st, payload)
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


async def run_and_wait(st: ApiState, task: str, *args: Any) -> dict[str, Any]:
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


# -- the events of one question ------------------------------------------------------------------
async def _events_local(st: ApiState, rid: str, deadline: float) -> AsyncIterator[dict[str, Any]]:
    ch = J.LOCAL_SINK.channel(rid)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceTimeoutError(f"no answer within {st.settings.query_timeout_s:.0f} s")
            try:
                event = await asyncio.to_thread(ch.get, True, min(left, 1.0))
            except queue.Empty:
                continue
            yield event
            if event.get("type") == "end":
                return
    finally:
        J.LOCAL_SINK.close(rid)


async def _events_redis(st: ApiState, rid: str, deadline: float) -> AsyncIterator[dict[str, Any]]:
    key = J.STREAM_PREFIX + rid
    last = "0-0"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceTimeoutError(f"no answer within {st.settings.query_timeout_s:.0f} s")
            got = await st.redis.xread({key: last}, block=int(min(left, 1.0) * 1000) or 1, count=256)
            for _key, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = json.loads(fields[b"e"])
                    yield event
                    if event.get("type") == "end":
                        return
    finally:
        await st.redis.delete(key)


def _events(st: ApiState, rid: str, deadline: float) -> AsyncIterator[dict[str, Any]]:
    return _events_redis(st, rid, deadline) if st.settings.broker_url else _events_local(st, rid, deadline)


def _raise_for(out: dict[str, Any]) -> dict[str, Any]:
    """The answer of an ``end`` event, or its error raised with the worker's status and code."""
    if out.get("ok"):
        return out["result"]
    err = out.get("error") or {}
    exc = LongragError(err.get("message", "the worker failed"))
    exc.code = err.get("code", "error")
    exc.http_status = int(err.get("status", 500))
    raise exc


def _give_up(st: ApiState, rid: str) -> None:
    st.jobs.fail(rid, "timeout", "the client stopped waiting")
    if st.settings.broker_url:
        st.dispatcher.app.control.revoke(rid)


async def _sse(st: ApiState, rid: str, deadline: float,
               on_result: OnResult | None = None) -> AsyncIterator[dict[str, str]]:
    """``token`` events, then one ``result`` (or ``error``); ``reset`` when a worker restarted."""
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
