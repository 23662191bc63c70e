"""Real processes for the UI tests: a uvicorn API (``longrag serve``) and the Streamlit app.

The API runs embedded (no broker) on a free loopback port with the tiny random decoder so
answers come fast; the embedder is the real MiniLM. One API serves the whole UI test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from http_helpers import free_port

from longrag.ui.client import LongragClient

REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = Path(os.environ.get("LONGRAG_TEST_MODEL_CACHE", REPO / ".cache" / "models"))

DOCUMENT = """The Lighthouse at Gull Point

Margaret Hale kept the lighthouse at Gull Point for thirty-one years. She was born in Dunmore in 1852 and came to the point as a young widow.

Every night she climbed the ninety-four steps of the tower to trim the wick and polish the great lens. The lamp burned whale oil until 1889, when the board sent kerosene.

In the winter storm of 1893 the schooner Albatross struck the northern reef. Margaret rowed out alone in the dory and brought seven sailors back to the shore.

The board of lighthouses awarded her a silver medal for the rescue. She kept the medal in a tin box beside her logbook until she retired in 1911.
"""


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Wait until ``url`` answers (any status), failing early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory, tiny_decoder_dir: Path) -> Iterator[Server]:
    """``longrag serve`` on a free port: embedded mode, tiny decoder, real MiniLM embedder.

    ``LONGRAG_UI_TEST_DECODER`` names another decoder (e.g. ``smollm2-135m-instruct``) for a
    screenshot with a real answer.
    ``LONGRAG_TEST_API_URL`` points the UI tests at an API that is already running instead.
    """
    if os.environ.get("LONGRAG_TEST_API_URL"):
        yield Server(os.environ["LONGRAG_TEST_API_URL"].rstrip("/"), None, None)  # type: ignore[arg-type]
        return
    root = tmp_path_factory.mktemp("ui-api")
    env = {k: v for k, v in os.environ.items() if k not in ("LONGRAG_BROKER_URL", "LONGRAG_API_KEY")}
    env |= {
        "LONGRAG_DATA_DIR": str(root / "data"),
        "LONGRAG_MODEL_CACHE": str(MODEL_CACHE),
        "LONGRAG_DECODER": os.environ.get("LONGRAG_UI_TEST_DECODER") or str(tiny_decoder_dir),
        "LONGRAG_MAX_NEW_TOKENS": os.environ.get("LONGRAG_UI_TEST_MAX_NEW_TOKENS", "12"),
        "LONGRAG_TORCH_THREADS": "1",
    }
    if not os.environ.get("LONGRAG_UI_TEST_DECODER"):  # the random decoder's replies would all be turned down
        env["LONGRAG_ANSWER_CHECKS"] = "false"
    port = free_port()
    log = root / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "longrag.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, log)
        yield Server(url, proc, log)
    finally:
        stop(proc)


@pytest.fixture()
def api(api_server: Server) -> Iterator[LongragClient]:
    with LongragClient(api_server.url, api_key="") as c:
        yield c


@pytest.fixture()
def gull_point(api: LongragClient) -> str:
    """The sample document, ingested through the API (idempotent); returns its id."""
    sub = api.add_text(DOCUMENT, "Gull Point")
    job = api.wait(sub.job_id, timeout=120, interval=0.2)
    assert job.state == "succeeded", job
    return sub.doc_id or job.result["doc_id"]


@pytest.fixture()
def sample_document() -> str:
    return DOCUMENT


@pytest.fixture()
def closed_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ui_server(api_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``longrag ui`` (Streamlit, headless) on a free port, talking to ``api_server``."""
    root = tmp_path_factory.mktemp("ui-app")
    env = {k: v for k, v in os.environ.items() if k != "LONGRAG_API_KEY"}
    env["HOME"] = str(root)  # Streamlit writes ~/.streamlit; keep it out of the real home
    port = free_port()
    log = root / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "longrag.cli", "ui", "--port", str(port),
                                 "--api-url", api_server.url], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stcore/health", proc, log, timeout=60)
        yield Server(url, proc, log)
    finally:
        stop(proc)
