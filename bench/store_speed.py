"""Search latency with the embedded SQLite store against a PostgreSQL store, over the same corpus.

Run: ``.venv/bin/python -m bench.store_speed [--chunks 100000]`` -> ``bench/results/store_speed.json``.

Both stores get the same documents (slices of the Gutenberg novels, cut into ~300-character
chunks) and the same vectors (random unit vectors: the FAISS cache serves both stores, so what
differs is the database work of a search: the chunk rows and texts of the hits). Measured per
store, side by side in one run, alternating query by query: ``Corpus.search`` (dense, k=10) p50
and p95 with the real MiniLM query encoder, the database part alone (``Corpus.hits``), and the
cold start of a host (its FAISS cache rebuilt from the database's vectors). The PostgreSQL server
runs on the same machine (bench/pg_server.py), as a small deployment's would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.pg_server import PostgresServer
from longrag.config import Settings
from longrag.retrieval.types import Chunk, Sentence
from longrag.services.corpus import Corpus
from longrag.services.db import close_all

REPO = Path(__file__).resolve().parents[1]
GUTENBERG = REPO.parent / "shared" / "datasets" / "gutenberg"
QUERIES = ["Who is the main character?", "Where does the story begin?", "What did she say to him?",
           "When did they arrive?", "Why was he angry?", "What is in the letter?", "Who owns the house?",
           "What happened at the ball?"]


def corpus_units(n_chunks: int, per_doc: int, chunk_chars: int = 300) -> list[tuple[str, list[Chunk]]]:
    """Documents of ``per_doc`` chunks each (one sentence per chunk) cut from the novels."""
    books = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted(GUTENBERG.glob("pg*.txt"))]
    docs, made, i = [], 0, 0
    while made < n_chunks:
        n = min(per_doc, n_chunks - made)
        book = books[i % len(books)]
        start = (i * 7919 * chunk_chars) % max(1, len(book) - n * chunk_chars)
        text = book[start : start + n * chunk_chars]
        text = text + " " * (n * chunk_chars - len(text))
        text = f"[{i}] " + text  # distinct bytes per document
        chunks = [Chunk(j, j * chunk_chars, min(len(text), (j + 1) * chunk_chars), j, j) for j in range(n)]
        docs.append((text, chunks))
        made += n
        i += 1
    return docs


def fill(corpus: Corpus, docs: list[tuple[str, list[Chunk]]], vectors: np.ndarray) -> float:
    """Write the documents and vectors straight into the store (no embedding); seconds taken."""
    t0 = time.perf_counter()
    store, at = corpus.store, 0
    for n, (text, chunks) in enumerate(docs):
        sentences = [Sentence(c.index, c.start, c.end) for c in chunks]
        with store.transaction() as tx:
            ids = store.insert_document(tx, doc_id=f"doc{n:05d}", sha256=f"{n:064d}", title=f"doc {n}",
                                        filename=None, kind="text", n_bytes=len(text), text=text,
                                        sentences=sentences, chunks=chunks)
            store.insert_vectors(tx, "chunk", ids, vectors[at : at + len(ids)])
            store.bump_generation(tx)
        at += len(ids)
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--per-doc", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "store_speed.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="longrag-store-speed-"))
    server = PostgresServer()
    try:
        docs = corpus_units(args.chunks, args.per_doc)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.chunks, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        urls = {"sqlite": f"sqlite:///{work / 'sqlite' / 'longrag.sqlite3'}", "postgresql": server.create_database()}
        out: dict = {"chunks": args.chunks, "documents": len(docs), "queries": args.queries, "k": 10,
                     "hardware": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
                                 "PostgreSQL 15 on the same machine (loopback)",
                     "loadavg_start": os.getloadavg(), "stores": {}}
        corpora = {}
        for name, url in urls.items():
            corpus = Corpus(settings=Settings(data_dir=work / f"{name}-writer", database_url=url))
            corpus.vector_builders = {"chunk": corpus.vector_builders["chunk"]}
            seconds = fill(corpus, docs, vectors)
            print(f"{name}: stored {args.chunks} chunks in {seconds:.1f} s", flush=True)
            reader = Corpus(settings=Settings(data_dir=work / f"{name}-reader", database_url=url))
            reader.vector_builders = {"chunk": reader.vector_builders["chunk"]}
            reader._embedder = corpus.embedder  # loaded once, outside the timings
            t0 = time.perf_counter()
            reader.index("chunk")  # a fresh host: its FAISS cache rebuilt from the database
            cold = time.perf_counter() - t0
            corpora[name] = reader
            out["stores"][name] = {"fill_s": round(seconds, 1), "cold_index_build_s": round(cold, 2)}
        embedder = next(iter(corpora.values())).embedder
        for c in corpora.values():
            c._embedder = embedder
        search_ms: dict[str, list[float]] = {n: [] for n in corpora}
        hits_ms: dict[str, list[float]] = {n: [] for n in corpora}
        for q in range(args.queries + 10):  # the first 10 warm up
            query = QUERIES[q % len(QUERIES)]
            for name, corpus in (corpora.items() if q % 2 == 0 else reversed(corpora.items())):
                t0 = time.perf_counter()
                hits = corpus.search(query, k=10, retriever="chunk")
                t1 = time.perf_counter()
                corpus.hits([h.chunk_id for h in hits], [h.score for h in hits])
                t2 = time.perf_counter()
                if q >= 10:
                    search_ms[name].append((t1 - t0) * 1000)
                    hits_ms[name].append((t2 - t1) * 1000)
        for name in corpora:
            out["stores"][name].update({
                "search_p50_ms": pct(search_ms[name], 0.5), "search_p95_ms": pct(search_ms[name], 0.95),
                "hits_p50_ms": pct(hits_ms[name], 0.5), "hits_p95_ms": pct(hits_ms[name], 0.95)})
        s, p = out["stores"]["sqlite"], out["stores"]["postgresql"]
        out["postgresql_over_sqlite_search_p50"] = round(p["search_p50_ms"] / s["search_p50_ms"], 3)
        out["postgresql_over_sqlite_search_p95"] = round(p["search_p95_ms"] / s["search_p95_ms"], 3)
        out["loadavg_end"] = os.getloadavg()
    finally:
        close_all()
        server.stop()
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
