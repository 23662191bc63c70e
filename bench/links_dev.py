"""Choose the title-link hop's ``read`` / ``keep`` on questions that are not evaluated.

Dev set: the HotpotQA questions of the IRCoT 500-question dev sample that are *not* among the
first 100 (the sentence-level evaluation set of ``bench.situated``), 400 questions, retrieved
from the pooled 4,858-paragraph corpus (the BEIR view) with the product's default hybrid
(situated residual dense + situated BM25, RRF) over 128-token sentence chunks; gold = the two
supporting paragraphs (the only gold the file has), a paragraph scoring as its best chunk.
Every ``read`` x ``keep`` pair is evaluated; the pick is the best R@10, then the best MRR@10.

Run: ``.venv/bin/python -m bench.links_dev`` (a few minutes: one encoding of the corpus);
writes ``bench/results/links_dev.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from bench.situated import DATA, beir_passages, linked, metrics, rank_dense, to_items, unit_keys
from longrag.retrieval.bm25 import BM25Index
from longrag.retrieval.fusion import reciprocal_rank_fusion
from longrag.retrieval.situated import SituatedConfig, SituatedEmbedder, situated_texts

OUT = Path(__file__).resolve().parent / "results" / "links_dev.json"


def main(argv: list[str] | None = None) -> None:
    import torch

    from longrag.models.registry import load_embedder
    from longrag.retrieval.embed import Embedder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--reads", default="0,1,2,3,5")
    ap.add_argument("--keeps", default="0,1,2,3,5")
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
    out = {
        "hardware": f"{platform.machine()} CPU, 2 cores, torch threads 2",
        "set": f"{len(task.queries)} HotpotQA IRCoT dev questions not in the first 100; "
               f"{len(task.docs)} pooled paragraphs, {len(keys)} chunks; paragraph-level gold",
        "retriever": "hybrid (situated residual pool + situated BM25, RRF k=60), then the title-link hop",
        "grid": grid, "best": best, "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"best: {best}; wrote {args.out}")


if __name__ == "__main__":
    main()
