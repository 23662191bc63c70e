"""Helpers shared by the tests that drive a real API over HTTP (embedded, broker and UI modes)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

DOC = (
    "The lighthouse at Cape Wrath was built in 1828 by Robert Stevenson. "
    "Its keeper, Angus MacLeod, lived there with two assistants and a grey cat named Biscuit. "
    "Supply boats came from Durness every second Thursday, weather permitting. "
    "In the great storm of 1877 the lamp burned for nine days without rest. "
    "The keepers kept a logbook of every passing ship, and the logbook survives in Edinburgh. "
    "Today the light is automatic, and the cottages are empty except in summer."
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 150) -> dict:
    """Poll ``/v1/jobs/{id}`` until it succeeded or failed; fail the test past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.05)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict, float]]:
    """(event name, JSON data, arrival time) for each server-sent event of a streaming response."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data)), time.time()
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())


@contextmanager
def serve(settings: Any) -> Iterator[httpx.Client]:
    """A real uvicorn serving ``create_app(settings)`` in a thread; yields a client for it."""
    import uvicorn

    from longrag.services.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
