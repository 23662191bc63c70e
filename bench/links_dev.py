"""Choose the title-link hop's ``read`` / ``keep`` on questions that are not evaluated.

Dev set: the HotpotQA questions of the IRCoT 500-question dev sample that are *not* among the
first 100 (the sentence-level evaluation set of ``bench.situated``), 400 questions, retrieved
from the pooled 4,858-paragraph corpus (the BEIR view) with the product's default hybrid
(situated residual dense + situated BM25, RRF) over 128-token sentence chunks; gold = the two
supporting paragraphs (the only gold the file has), a paragraph scoring as its best chunk.
Every ``read`` x ``keep`` pair is evaluated; the pick is the best R@10, then the best MRR@10.

Run: ``.venv/bin/python -m bench.links_dev`` (a few minutes: one encoding of the corpus);
writes ``bench/results/links_dev.json``. ``--product`` also checks the product's own path on the
same questions: every paragraph ingested with its title into a fresh store (``Corpus``, default
settings: ONNX embedder, 128-token chunks, FAISS), each question through ``Corpus.search`` with
the default link hop and with ``link_hop=0`` (the top 20 chunks, a paragraph ranked at its
first chunk, cut at 10 paragraphs).
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

from bench.situated import DATA, beir_passages, linked, metrics, rank_dense, to_items, unit_keys
from longrag.retrieval.bm25 import BM25Index
from longrag.retrieval.fusion import reciprocal_rank_fusion
from longrag.retrieval.situated import SituatedConfig, SituatedEmbedder, situated_texts

OUT = Path(__file__).resolve().parent / "results" / "links_dev.json"


def product_path(task) -> dict:
    """The same questions through the product: ingest every paragraph with its title, search
    with the default link hop and without (module docstring)."""
    from longrag.config import Settings
    from longrag.services.corpus import Corpus

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LONGRAG_DATA_DIR"] = tmp
        settings = Settings()
        corpus = Corpus(settings=settings)
        t0 = time.perf_counter()
        doc_of = {}
        for d, doc in enumerate(task.docs):
            doc_of.setdefault(corpus.ingest_bytes(doc.text.encode(), title=doc.title).doc_id, d)
        ingest_s = time.perf_counter() - t0
        out: dict = {"ingest_seconds": round(ingest_s, 1), "documents": len(corpus.list()),
                     "settings": {"retriever": settings.retriever, "link_hop": settings.link_hop,
                                  "link_keep": settings.link_keep, "embed_backend": settings.embed_backend}}
        for hop in (0, settings.link_hop):
            t0 = time.perf_counter()
            ranked = []
            for q in task.queries:
                docs: list[tuple[int, int]] = []
                for h in corpus.search(q, k=20, link_hop=hop):
                    key = (doc_of[h.doc_id], -1)
                    if key not in docs:
                        docs.append(key)
                ranked.append(docs[:10])
            out[f"link_hop={hop}"] = {**metrics(task, ranked),
                                      "ms_per_query": round((time.perf_counter() - t0) * 1000 / len(task.queries), 1)}
            print(f"product path, link_hop={hop}: {out[f'link_hop={hop}']}", flush=True)
        return out


def main(argv: list[str] | None = None) -> None:
    import torch

    from longrag.models.registry import load_embedder
    from longrag.retrieval.embed import Embedder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--reads", default="0,1,2,3,5")
    ap.add_argument("--keeps", default="0,1,2,3,5")
    ap.add_argument("--product", action="store_true", help="also through Corpus.search on a fresh store")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    embedder = Embedder(load_embedder("all-minilm-l6-v2"))
    task = beir_passages("hotpotqa_dev400_passages", DATA / "hotpotqa" / "derived_beir", embedder)
    evaluated = {r["question"] for r in json.loads(
        (DATA / "hotpotqa" / "hotpotqa_dev_distractor_first100_hf.json").read_text())}
    pick = [i for i, q in enumerate(task.queries) if q not in evaluated]
    task.queries = [task.queries[i] for i in pick]
    task.gold = [task.gold[i] for i in pick]
    keys = unit_keys(task)
    vecs = SituatedEmbedder(embedder, SituatedConfig()).embed_many(task.docs)
    dense = rank_dense(embedder.encode(task.queries), np.concatenate([v.combined() for v in vecs]), 200)
    bm = BM25Index(list(range(len(keys))), [t for d in task.docs for t in situated_texts(d)])
    fused = [[i for i, _ in reciprocal_rank_fusion([list(map(int, d)), [h.id for h in bm.search(q, 200)]])]
             for d, q in zip(dense, task.queries)]
    grid = {}
    for read in map(int, args.reads.split(",")):
        for keep in map(int, args.keeps.split(",")):
            ranked = linked(task, keys, fused, read, keep)
            grid[f"read{read}_keep{keep}"] = m = metrics(task, [to_items(task, keys, r, 10) for r in ranked])
            print(f"read {read} keep {keep}: {m}", flush=True)
    best = max(grid, key=lambda k: (grid[k]["R@10"], grid[k]["MRR@10"]))
    product = product_path(task) if args.product else None
    out = {
        "hardware": f"{platform.machine()} CPU, 2 cores, torch threads 2",
        "set": f"{len(task.queries)} HotpotQA IRCoT dev questions not in the first 100; "
               f"{len(task.docs)} pooled paragraphs, {len(keys)} chunks; paragraph-level gold",
        "retriever": "hybrid (situated residual pool + situated BM25, RRF k=60), then the title-link hop",
        "grid": grid, "best": best, "seconds": round(time.perf_counter() - t_start, 1),
        **({"product_path": product} if product else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"best: {best}; wrote {args.out}")


if __name__ == "__main__":
    main()
