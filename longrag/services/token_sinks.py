"""Token streams: how the tokens a worker generates reach the API that streams them.

With a broker, a worker appends each event to a Redis stream keyed by the request id and the
API reads it with XREAD; without one, the task runs inside the API and events go through an
in-process queue per request.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Protocol

from longrag.config import Settings


class TokenSink(Protocol):
    def publish(self, request_id: str, event: dict[str, Any]) -> None: ...


STREAM_PREFIX = "longrag:tokens:"
STREAM_TTL_S = 600


class RedisTokenSink:
    """Appends events to a Redis stream keyed by request id (the API reads it with XREAD)."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)

    def publish(self, request_id: str, event: dict[str, Any]) -> None:
        key = STREAM_PREFIX + request_id
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, {"e": json.dumps(event, ensure_ascii=False)}, maxlen=20000, approximate=True)
        pipe.expire(key, STREAM_TTL_S)
        pipe.execute()


class LocalTokenSink:
    """In-process queues keyed by request id (embedded mode: the task runs in the API)."""

    def __init__(self) -> None:
        self._queues: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()

    def channel(self, request_id: str) -> queue.SimpleQueue:
        with self._lock:
            return self._queues.setdefault(request_id, queue.SimpleQueue())

    def close(self, request_id: str) -> None:
        with self._lock:
            self._queues.pop(request_id, None)

    def publish(self, request_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            q = self._queues.get(request_id)
        if q is not None:
            q.put(event)


LOCAL_SINK = LocalTokenSink()
_redis_sinks: dict[str, RedisTokenSink] = {}


def token_sink(settings: Settings) -> TokenSink:
    if not settings.broker_url:
        return LOCAL_SINK
    if settings.broker_url not in _redis_sinks:
        _redis_sinks[settings.broker_url] = RedisTokenSink(settings.broker_url)
    return _redis_sinks[settings.broker_url]
