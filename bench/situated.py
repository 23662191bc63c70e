"""Situated retrieval benchmark: chunk-only vs situated strategies vs BM25 vs hybrid
vs a plain LangChain splitter pipeline, side by side in one run, on real data.

Sentence level
  * HotpotQA dev first-100: corpus = every sentence of every question's 10 paragraphs (pooled,
    each paragraph once); gold = supporting-fact sentences; R@5, R@10, MRR@10.
  * SQuAD v1.1 dev part 2: corpus = every sentence (our segmenter) of its 24 articles; 500
    questions sampled with ``random.seed(7)``; gold = the sentence holding the answer start;
    R@1, R@5, R@10, MRR@10.
Passage level (sanity): Cranfield (225 queries, 1,400 abstracts) and the HotpotQA BEIR view
(500 queries, 4,858 paragraphs): nDCG@10; a document scores as its best chunk
(``sentence_chunks`` at 128 tokens, as the product ingests).

Run: ``.venv/bin/python -m bench.situated``; writes ``bench/results/situated.json``. It encodes
about 16k units several times (one pass per encoding strategy, plus LangChain's chunks): plan
on an hour or more on 2 CPU cores; ``--tasks``, ``--methods``, ``--no-langchain`` and
``--cache DIR`` (reuse chunk-only and query vectors between runs) run parts of it, and a
partial run updates those tasks and methods in an existing result file (its arguments are listed
under ``partial_run_args``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from longrag.retrieval.bm25 import BM25Index
from longrag.retrieval.chunking import sentence_chunks
from longrag.retrieval.embed import Embedder
from longrag.retrieval.fusion import reciprocal_rank_fusion
from longrag.retrieval.links import TitleLinks, link_hop
from longrag.retrieval.segment import split_sentences
from longrag.retrieval.situated import SituatedConfig, SituatedEmbedder, UnitDoc, situated_texts

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"
OUT = REPO / "bench" / "results" / "situated.json"


# -- data -------------------------------------------------------------------------------------
@dataclass
class Task:
    """Docs with units, queries, and per query the set of relevant unit keys (doc, unit)."""

    name: str
    docs: list[UnitDoc]
    queries: list[str]
    gold: list[dict[tuple[int, int], float]]  # (doc index, unit index) -> relevance grade
    level: str  # sentence | passage


def _spans_of(pieces: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    text, spans, pos = "", [], 0
    for p in pieces:
        a = pos + (len(p) - len(p.lstrip()))
        b = pos + len(p.rstrip())
        text += p
        pos += len(p)
        spans.append((a, max(a, b)))
    return text, spans


def hotpot_sentences() -> Task:
    rows = json.loads((DATA / "hotpotqa" / "hotpotqa_dev_distractor_first100_hf.json").read_text())
    docs: list[UnitDoc] = []
    by_title: dict[str, int] = {}
    queries, gold = [], []
    for r in rows:
        for title, sents in zip(r["context"]["title"], r["context"]["sentences"]):
            if title not in by_title:
                text, spans = _spans_of(sents)
                by_title[title] = len(docs)
                docs.append(UnitDoc(text, spans, title))
        g = {}
        for title, sid in zip(r["supporting_facts"]["title"], r["supporting_facts"]["sent_id"]):
            d = by_title[title]
            if sid < len(docs[d].units):
                g[(d, sid)] = 1.0
        queries.append(r["question"])
        gold.append(g)
    return Task("hotpotqa_first100_sentences", docs, queries, gold, "sentence")


def squad_docs(part: int) -> tuple[list[UnitDoc], list[tuple[str, int, int]]]:
    """Articles as documents (paragraphs joined by blank lines), and (question, doc, char)."""
    data = json.loads((DATA / "squad_v1.1" / f"dev-v1.1.part{part}of2.json").read_text())["data"]
    docs, qs = [], []
    for art in data:
        parts, offsets, pos = [], [], 0
        for p in art["paragraphs"]:
            offsets.append(pos)
            parts.append(p["context"])
            pos += len(p["context"]) + 2
        text = "\n\n".join(parts)
        units = [(s.start, s.end) for s in split_sentences(text, max_chars=1200)]
        d = len(docs)
        docs.append(UnitDoc(text, units, art["title"].replace("_", " ")))
        for p, off in zip(art["paragraphs"], offsets):
            for q in p["qas"]:
                qs.append((q["question"], d, off + q["answers"][0]["answer_start"]))
    return docs, qs


def unit_at(doc: UnitDoc, char: int) -> int:
    for i, (a, b) in enumerate(doc.units):
        if char < b:
            return i
    return len(doc.units) - 1


def squad_sentences(part: int = 2, n: int = 500, seed: int = 7) -> Task:
    docs, qs = squad_docs(part)
    random.seed(seed)
    sample = random.sample(qs, n) if n < len(qs) else qs
    gold = [{(d, unit_at(docs[d], c)): 1.0} for _, d, c in sample]
    return Task(f"squad_v1.1_dev_part{part}_sentences", docs, [q for q, _, _ in sample], gold, "sentence")


def _beir(folder: Path) -> tuple[list[dict], dict[str, str], dict[str, dict[str, float]]]:
    corpus = [json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines() if x.strip()]
    queries = {}
    for x in (folder / "queries.jsonl").read_text().splitlines():
        if x.strip():
            q = json.loads(x)
            queries[q["_id"]] = q["text"]
    qrels: dict[str, dict[str, float]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        if float(score) > 0:
            qrels.setdefault(qid, {})[did] = float(score)
    return corpus, queries, qrels


def beir_passages(name: str, folder: Path, embedder: Embedder, chunk_tokens: int = 128) -> Task:
    corpus, queries, qrels = _beir(folder)
    docs, index = [], {}
    for row in corpus:
        text = row["text"] or row["title"] or "(empty)"
        sents = split_sentences(text, max_chars=1200)
        counts = embedder.count_tokens([text[s.start : s.end] for s in sents])
        chunks = sentence_chunks(sents, counts, target_tokens=chunk_tokens)
        index[row["_id"]] = len(docs)
        docs.append(UnitDoc(text, [(c.start, c.end) for c in chunks], row["title"] or None))
    qids = [q for q in queries if q in qrels]
    gold = [{(index[d], -1): s for d, s in qrels[q].items() if d in index} for q in qids]
    return Task(name, docs, [queries[q] for q in qids], gold, "passage")


# -- ranking and metrics ----------------------------------------------------------------------
def unit_keys(task: Task) -> list[tuple[int, int]]:
    return [(d, u) for d, doc in enumerate(task.docs) for u in range(len(doc.units))]


def rank_dense(q: np.ndarray, vecs: np.ndarray, depth: int) -> np.ndarray:
    scores = q @ vecs.T
    top = np.argpartition(-scores, min(depth, scores.shape[1] - 1), axis=1)[:, :depth]
    order = np.take_along_axis(scores, top, 1).argsort(1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


def to_items(task: Task, keys: list[tuple[int, int]], ranked: Sequence[int], k: int) -> list[tuple[int, int]]:
    """Ranked unit rows -> ranked gold keys (passage level: documents, deduplicated)."""
    out: list[tuple[int, int]] = []
    seen = set()
    for r in ranked:
        key = keys[int(r)]
        if task.level == "passage":
            key = (key[0], -1)
        if key not in seen:
            seen.add(key)
            out.append(key)
        if len(out) >= k:
            break
    return out


def metrics(task: Task, rankings: list[list[tuple[int, int]]]) -> dict[str, float]:
    ks = (1, 5, 10)
    rec = {k: [] for k in ks}
    mrr, ndcg = [], []
    for ranked, g in zip(rankings, task.gold):
        if not g:
            continue
        for k in ks:
            rec[k].append(sum(1 for x in ranked[:k] if x in g) / len(g))
        rr = next((1 / (i + 1) for i, x in enumerate(ranked[:10]) if x in g), 0.0)
        mrr.append(rr)
        dcg = sum((2 ** g.get(x, 0) - 1) / math.log2(i + 2) for i, x in enumerate(ranked[:10]))
        ideal = sorted(g.values(), reverse=True)[:10]
        idcg = sum((2**s - 1) / math.log2(i + 2) for i, s in enumerate(ideal))
        ndcg.append(dcg / idcg if idcg else 0.0)
    out = {f"R@{k}": round(float(np.mean(rec[k])), 4) for k in ks}
    out["MRR@10"] = round(float(np.mean(mrr)), 4)
    if task.level == "passage":
        out = {"nDCG@10": round(float(np.mean(ndcg)), 4), "R@10": out["R@10"], "MRR@10": out["MRR@10"]}
    out["queries"] = len(mrr)
    return out


# -- methods ----------------------------------------------------------------------------------
def linked(task: Task, keys: list[tuple[int, int]], rankings: Sequence[Sequence[int]], read: int,
           keep: int) -> list[list[int]]:
    """Each ranking after one title-link hop (``longrag.retrieval.links``), as the product does."""
    links = TitleLinks((d, doc.title) for d, doc in enumerate(task.docs))
    first = np.cumsum([0, *(len(d.units) for d in task.docs)])

    def text_of(row: int) -> str:
        d, u = keys[row]
        return task.docs[d].text[slice(*task.docs[d].units[u])]

    return [link_hop([int(r) for r in ranked], text_of=text_of, doc_of=lambda row: keys[row][0],
                     lead_of=lambda d: int(first[d]) if task.docs[d].units else None, links=links,
                     read=read, keep=keep) for ranked in rankings]


def langchain_rankings(task: Task, embedder: Embedder, qv: np.ndarray, depth: int,
                       chunk_size: int, overlap: int) -> tuple[list[list[tuple[int, int]]], float]:
    """LangChain RecursiveCharacterTextSplitter chunks, same embedder, FAISS flat IP; each
    retrieved chunk is credited with the units it overlaps (in order) up to the cut-off."""
    import faiss
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=overlap, add_start_index=True)
    t0 = time.perf_counter()
    chunks, owners = [], []
    for d, doc in enumerate(task.docs):
        for piece in splitter.create_documents([doc.text]):
            a = piece.metadata["start_index"]
            chunks.append(piece.page_content)
            owners.append((d, a, a + len(piece.page_content)))
    vecs = embedder.encode(chunks)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    seconds = time.perf_counter() - t0
    _, ids = index.search(qv, min(depth, len(chunks)))
    rankings = []
    for row in ids:
        ranked: list[tuple[int, int]] = []
        for i in row:
            d, a, b = owners[int(i)]
            if task.level == "passage":
                cand = [(d, -1)]
            else:
                cand = [(d, u) for u, (ua, ub) in enumerate(task.docs[d].units) if ua < b and ub > a]
            ranked.extend(c for c in cand if c not in ranked)
            if len(ranked) >= 10:
                break
        rankings.append(ranked[:10])
    return rankings, seconds


def run_task(task: Task, embedder: Embedder, methods: dict[str, SituatedConfig], *, lc: tuple[int, int],
             cache: Path | None = None, baselines: bool = True, langchain: bool = True,
             link_hop: tuple[int, int] = (5, 2)) -> dict:
    print(f"\n== {task.name}: {len(task.docs)} docs, {sum(len(d.units) for d in task.docs)} units, "
          f"{len(task.queries)} queries", flush=True)
    keys = unit_keys(task)
    depth = 200 if task.level == "passage" else 50
    base = SituatedEmbedder(embedder, SituatedConfig())
    cached = cache / f"{task.name}.npz" if cache else None
    if cached and cached.exists():
        z = np.load(cached)
        qv, C, t_chunk = z["qv"], z["C"], float(z["t_chunk"])
    else:
        qv = embedder.encode(task.queries)
        t0 = time.perf_counter()
        C = np.concatenate(base.chunk_vectors(task.docs))
        t_chunk = time.perf_counter() - t0
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, qv=qv, C=C, t_chunk=t_chunk)
    bounds = np.cumsum([0, *(len(d.units) for d in task.docs)])
    chunks = [C[bounds[i] : bounds[i + 1]] for i in range(len(task.docs))]
    print(f"  chunk-only encode {t_chunk:.1f}s", flush=True)
    results: dict[str, dict] = {}
    dense_rank: dict[str, np.ndarray] = {}

    def record(name: str, ranked_rows: np.ndarray | list, extra_s: float | None) -> None:
        rankings = [to_items(task, keys, r, 10) for r in ranked_rows]
        m = metrics(task, rankings)
        if extra_s is not None:
            m["ingest_cost_ratio"] = round((t_chunk + extra_s) / t_chunk, 3)
        results[name] = m
        print(f"  {name:28s} {m}", flush=True)

    dense_rank["chunk"] = rank_dense(qv, C, depth)
    record("chunk", dense_rank["chunk"], 0.0)
    for name, cfg in methods.items():
        emb = SituatedEmbedder(embedder, cfg)
        t0 = time.perf_counter()
        vecs = emb.embed_many(task.docs, chunk_vectors=chunks)
        extra = time.perf_counter() - t0
        V = np.concatenate([v.combined() for v in vecs])
        dense_rank[name] = rank_dense(qv, V, depth)
        record(name, dense_rank[name], extra)

    if not baselines:
        return {"docs": len(task.docs), "units": len(keys), "queries": len(task.queries),
                "chunk_only_encode_seconds": round(t_chunk, 2), "methods": results}
    t0 = time.perf_counter()
    bm = BM25Index(list(range(len(keys))), [task.docs[d].text[slice(*task.docs[d].units[u])] for d, u in keys])
    t_bm = time.perf_counter() - t0
    bm_rank = [[h.id for h in bm.search(q, depth)] for q in task.queries]
    record("bm25", bm_rank, None)
    results["bm25"]["index_seconds"] = round(t_bm, 2)
    # BM25 over situated texts: each unit indexed with the document's lead unit (contextual BM25)
    sbm = BM25Index(list(range(len(keys))), [t for d in task.docs for t in situated_texts(d)])
    sbm_rank = [[h.id for h in sbm.search(q, depth)] for q in task.queries]
    record("bm25_situated", sbm_rank, None)
    if link_hop[0]:  # the link hop is not specific to the hybrid: BM25 with it, for comparison
        record("bm25_situated+links", linked(task, keys, sbm_rank, *link_hop), None)
    fused = [[i for i, _ in reciprocal_rank_fusion([list(map(int, d)), b])] for d, b in zip(dense_rank["chunk"], bm_rank)]
    record("hybrid(chunk+bm25)", fused, None)
    for name in ["chunk", *methods]:
        fused = [[i for i, _ in reciprocal_rank_fusion([list(map(int, d)), b])] for d, b in zip(dense_rank[name], sbm_rank)]
        record(f"hybrid({name}+bm25_situated)", fused, None)
        if name in ("chunk", "residual_pool") and link_hop[0]:
            record(f"hybrid({name}+bm25_situated)+links", linked(task, keys, fused, *link_hop), None)
    if not langchain:
        return {"docs": len(task.docs), "units": len(keys), "queries": len(task.queries),
                "chunk_only_encode_seconds": round(t_chunk, 2), "methods": results}
    rankings, t_lc = langchain_rankings(task, embedder, qv, depth, *lc)
    m = metrics(task, rankings)
    m["ingest_cost_ratio"] = round(t_lc / t_chunk, 3)
    m["splitter"] = {"chunk_size": lc[0], "chunk_overlap": lc[1]}
    results["langchain_recursive"] = m
    print(f"  {'langchain_recursive':28s} {m}", flush=True)
    return {
        "docs": len(task.docs), "units": len(keys), "queries": len(task.queries),
        "chunk_only_encode_seconds": round(t_chunk, 2), "methods": results,
    }


def cost_ratios(docs: list[UnitDoc], embedder: Embedder, methods: dict[str, SituatedConfig],
                repeats: int = 3) -> dict[str, float]:
    """Ingestion cost of each method as a ratio to chunk-only encoding of the same documents,
    timed back to back (median of ``repeats`` interleaved rounds): (chunk encode + situating)
    / chunk encode. For ``residual`` with ``pool`` situating reuses the chunk vectors."""
    times: dict[str, list[float]] = {"chunk": [], **{k: [] for k in methods}}
    for _ in range(repeats):
        t0 = time.perf_counter()
        chunks = SituatedEmbedder(embedder).chunk_vectors(docs)
        t_chunk = time.perf_counter() - t0
        times["chunk"].append(t_chunk)
        for name, cfg in methods.items():
            t0 = time.perf_counter()
            SituatedEmbedder(embedder, cfg).embed_many(docs, chunk_vectors=chunks)
            times[name].append(t_chunk + time.perf_counter() - t0)
    base = float(np.median(times["chunk"]))
    return {"chunk_seconds": round(base, 3), "docs": len(docs), "units": sum(len(d.units) for d in docs),
            **{k: round(float(np.median(v)) / base, 3) for k, v in times.items() if k != "chunk"}}


def default_methods() -> dict[str, SituatedConfig]:
    base = SituatedConfig()
    return {
        "residual_pool": replace(base, strategy="residual", context="pool"),
        "residual_pool+title": replace(base, strategy="residual", context="pool", use_title=True),
        "residual_encode": replace(base, strategy="residual", context="encode"),
        "late_256": replace(base, strategy="late", late_max_tokens=256),
        "late_512": replace(base, strategy="late", late_max_tokens=512),
        "late_256+title": replace(base, strategy="late", late_max_tokens=256, use_title=True),
        "trained": replace(base, strategy="trained"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    from longrag.models.registry import load_embedder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tasks", default="hotpot,squad,cranfield,hotpot_beir")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the situated methods")
    ap.add_argument("--squad-n", type=int, default=500)
    ap.add_argument("--cache", type=Path, default=None,
                    help="reuse chunk-only and query vectors (and their timing) stored here by an earlier run")
    ap.add_argument("--no-baselines", action="store_true", help="skip BM25, hybrid and LangChain")
    ap.add_argument("--no-langchain", action="store_true", help="skip the LangChain pipeline")
    ap.add_argument("--link-hop", default="5,2",
                    help="READ,KEEP of the title-link hop after the hybrid (the product's LONGRAG_LINK_HOP / "
                         "LONGRAG_LINK_KEEP); 0,0: no link rows")
    ap.add_argument("--cost-docs", type=int, default=150, help="documents in the ingestion-cost timing (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    embedder = Embedder(load_embedder("all-minilm-l6-v2"))
    methods = default_methods()
    from longrag.retrieval.situated import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.exists():
        methods.pop("trained")
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    builders: dict[str, Callable[[], Task]] = {
        "hotpot": hotpot_sentences,
        "squad": lambda: squad_sentences(2, args.squad_n, 7),
        "cranfield": lambda: beir_passages("cranfield_passages", DATA / "cranfield" / "beir", embedder),
        "hotpot_beir": lambda: beir_passages("hotpotqa_beir_passages", DATA / "hotpotqa" / "derived_beir", embedder),
    }
    out = {
        "hardware": f"{platform.machine()} CPU, 2 cores shared with other jobs, torch threads 2",
        "embedder": "all-MiniLM-L6-v2 (bundled, max_seq_length 256, 512 positions)",
        "search": "exact inner product (numpy, FAISS-equivalent); BM25 = bm25s Lucene k1=1.2 b=0.75",
        "score": "situated methods: (sim(q,s) + beta*sim(q,c)) / (1+beta); hybrid = RRF k=60 of dense and BM25",
        "configs": {k: {f: getattr(v, f) for f in v.__dataclass_fields__} for k, v in methods.items()},
        "ingest_cost_ratio": "(chunk-only encode + situating time) / chunk-only encode time, same run",
        "tasks": {},
    }
    t_start = time.perf_counter()
    if args.cost_docs:
        sample = hotpot_sentences().docs[: args.cost_docs]
        out["ingest_cost"] = cost_ratios(sample, embedder, methods)
        out["ingest_cost"]["sample"] = f"first {args.cost_docs} HotpotQA first-100 paragraphs, sentence units"
        print("ingest cost ratios:", out["ingest_cost"], flush=True)
    for name in filter(None, args.tasks.split(",")):
        task = builders[name]()
        lc = (256, 32) if task.level == "sentence" else (1000, 100)
        out["tasks"][task.name] = run_task(task, embedder, methods, lc=lc, cache=args.cache,
                                           baselines=not args.no_baselines, langchain=not args.no_langchain,
                                           link_hop=tuple(map(int, args.link_hop.split(","))))
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    partial = args.tasks != ap.get_default("tasks") or args.methods or args.no_baselines or args.no_langchain
    if args.out.exists() and partial:
        # a partial run (some tasks or methods) updates those of an earlier full result
        earlier = json.loads(args.out.read_text())
        for name, task_out in out["tasks"].items():  # methods run now replace theirs, others stay
            methods_now = task_out["methods"]
            task_out["methods"] = {**earlier["tasks"].get(name, {}).get("methods", {}), **methods_now}
        earlier["tasks"].update(out["tasks"])
        earlier["configs"].update(out["configs"])
        if "ingest_cost" in out:
            earlier["ingest_cost"] = out["ingest_cost"]
        out = {**earlier, **{k: v for k, v in out.items() if k not in ("tasks", "configs")}, "tasks": earlier["tasks"],
               "configs": earlier["configs"], "partial_runs": True,
               "partial_run_args": [*earlier.get("partial_run_args", []),
                                    {"argv": list(argv) if argv is not None else sys.argv[1:],
                                     "date": time.strftime("%Y-%m-%d"), "seconds": out["total_seconds"]}]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
