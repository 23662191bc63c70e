"""Shared fixtures: an isolated data directory per test, shared model caches, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
MODEL_CACHE = Path(os.environ.get("LONGRAG_TEST_MODEL_CACHE", REPO / ".cache" / "models"))


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty data directory; the dequantized models are shared."""
    from longrag.config import get_settings

    d = tmp_path / "data"
    monkeypatch.setenv("LONGRAG_DATA_DIR", str(d))
    monkeypatch.setenv("LONGRAG_MODEL_CACHE", str(MODEL_CACHE))
    monkeypatch.delenv("LONGRAG_BROKER_URL", raising=False)
    monkeypatch.delenv("LONGRAG_API_KEY", raising=False)
    # the tiny random decoder's replies would all be turned down by the answer checks (their own
    # tests set them on); token-level contract tests need its replies as they are
    monkeypatch.setenv("LONGRAG_ANSWER_CHECKS", "false")
    get_settings.cache_clear()
    yield d
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from longrag.models.tiny import build_tiny_decoder

    return build_tiny_decoder(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.exists():
        pytest.skip("../shared/datasets is not present")
    return DATASETS


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the test session's own (bench/pg_server.py)."""
    from bench.pg_server import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def each_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, data_dir: Path):
    """Runs a test once on the embedded SQLite store and once on a fresh PostgreSQL database
    (``LONGRAG_DATABASE_URL``). Modules opt in with ``pytestmark = pytest.mark.usefixtures("each_backend")``."""
    from longrag.config import get_settings
    from longrag.services.db import close_all

    if request.param == "postgresql":
        monkeypatch.setenv("LONGRAG_DATABASE_URL", request.getfixturevalue("postgres").create_database())
    else:
        monkeypatch.delenv("LONGRAG_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield request.param
    close_all()
    get_settings.cache_clear()
