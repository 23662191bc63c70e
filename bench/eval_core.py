"""Core evaluation: retrieval quality on SQuAD / HotpotQA / Cranfield, ingestion throughput.

    python -m bench.eval_core [--only squad,squad-product,hotpot,cranfield,ingest] [--squad-n 0]

- ``squad``: SQuAD v1.1 dev, every article ingested as one document through the product's
  :class:`Corpus` (paragraphs joined with blank lines); a question is a hit at rank r when the
  r-th returned chunk contains a gold answer span's offsets. recall@1/5/10 and MRR@10 over all
  10,570 questions (``--squad-n`` samples fewer), for the default embed backend, the plain
  torch backend, and bm25s over the same chunks. Queries are embedded and searched in batch
  with the corpus's own embedder and FAISS index (checked to equal ``Corpus.search`` on a
  sample of questions).
- ``squad-product``: the same questions through ``Corpus.search`` with the product's own
  retrievers (``--retrievers hybrid,situated``: the default hybrid and situated vectors), one
  question at a time; rows added to the ``squad`` result.
- ``hotpot`` (BEIR view: 4,858 paragraphs, 500 queries, 2 gold paragraphs each) and
  ``cranfield`` (1,400 abstracts, 225 queries, graded qrels, ordinal query ids): each
  paragraph/abstract is one passage ("title. text") embedded by the product's embedder into
  its :class:`VectorIndex`; recall@10 and nDCG@10; bm25s as the peer.
- ``ingest``: sentences/s of ``Corpus.ingest_bytes`` on a Gutenberg novel (parse, segment,
  chunk, embed, index, store), per embed backend, fresh data directory each.

Each part writes ``bench/results/core_<part>.json``. End-to-end EM/F1 is ``bench.e2e_squad``.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DATASETS, WORK, hardware, set_threads, write_result
from bench.data import BeirSet, load_cranfield, load_hotpot_beir, load_squad
from bench.metrics import dedupe, first_hit_rank, hit_metrics, ndcg_at_k, recall_at_k
from bench.squad_corpus import squad_corpus

log = logging.getLogger("bench.eval_core")
KS = (1, 5, 10)


def _default_backend() -> str:
    from longrag.models.registry import embed_backend_for

    return embed_backend_for("cpu")


def _use_backend(backend: str) -> None:
    """Make the product's settings (hence ``Corpus``) use this embed backend."""
    import os

    from longrag.config import get_settings

    os.environ["LONGRAG_EMBED_BACKEND"] = backend
    get_settings.cache_clear()


def _bm25(texts: list[str]):
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def search(queries: list[str], k: int) -> np.ndarray:
        res, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=k,
                                    show_progress=False, n_threads=1)
        return np.asarray(res)

    return search


# -- SQuAD ------------------------------------------------------------------------------------
def _holds_answer(q, doc: int | None, start: int, end: int) -> bool:
    """A unit of article ``doc`` spanning [start, end) holds one of ``q``'s gold answer spans."""
    return doc == q.article and any(start <= s and e <= end for s, e in q.spans)


def _dense_ranks(corpus, doc_index: dict[str, int], questions, ids: np.ndarray) -> list[int | None]:
    """First-hit rank of each question's row of chunk ids (from a batched index search)."""
    rows = corpus.store.chunk_rows(np.unique(ids[ids >= 0]).tolist())
    return [first_hit_rank([(r := rows.get(int(c))) is not None and _holds_answer(q, doc_index.get(r.doc_id), r.start, r.end)
                            for c in row_ids]) for q, row_ids in zip(questions, ids)]


def squad_retrieval(n: int, backends: list[str], work: Path, query_backends: list[str] = ()) -> dict:
    articles, questions = load_squad()
    if n and n < len(questions):
        questions = random.Random(0).sample(questions, n)
    results: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    chunk_texts: list[str] = []
    chunk_spans: list[tuple[int, int, int]] = []
    for backend in backends:
        _use_backend(backend)
        corpus, doc_ids, ingest_s = squad_corpus(articles, work / f"squad-{backend}")
        doc_index = {d: i for i, d in enumerate(doc_ids)}
        t0 = time.perf_counter()
        qvecs = corpus.embedder.encode([q.question for q in questions])
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, ids = corpus.index().search(qvecs, max(KS))
        search_s = time.perf_counter() - t0
        for q, qv in list(zip(questions, qvecs))[:25]:  # batch path == the product's search
            want = [h.score for h in corpus.search(q.question, k=max(KS), retriever="chunk", link_hop=0)]
            got = corpus.index().search(qv[None], max(KS))[0][0]
            # same hits up to float noise (a batch pads differently, so near-ties may swap)
            assert np.allclose(want, got, atol=1e-3), "batched search differs from Corpus.search"
        ranks = _dense_ranks(corpus, doc_index, questions, ids)
        results[f"longrag_dense[{backend}]"] = hit_metrics(ranks, KS)
        for qb in query_backends:  # other query encoders against the same chunk vectors
            from longrag.models.registry import load_embedder
            from longrag.retrieval.embed import Embedder

            qv2 = Embedder(load_embedder(backend=qb, device="cpu")).encode([q.question for q in questions])
            _, ids2 = corpus.index().search(qv2, max(KS))
            ranks2 = _dense_ranks(corpus, doc_index, questions, ids2)
            results[f"longrag_dense[chunks {backend}, queries {qb}]"] = hit_metrics(ranks2, KS)
            cos = (qvecs * qv2).sum(axis=1)
            extra[f"query_cosine_{qb}_vs_{backend}"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}
        n_chunks = corpus.store.count_vectors("chunk")
        extra[backend] = {"chunks": n_chunks, "ingest_seconds_this_run": round(ingest_s, 1),
                          "query_embed_seconds": round(embed_s, 1), "search_seconds": round(search_s, 2)}
        if not chunk_texts:
            for d_i, d in enumerate(doc_ids):
                text = corpus.text(d)
                for _, c in corpus.store.chunks(d):
                    chunk_texts.append(text[c.start : c.end])
                    chunk_spans.append((d_i, c.start, c.end))
        log.info("squad %s: %s", backend, results[f"longrag_dense[{backend}]"])
    search = _bm25(chunk_texts)
    top = search([q.question for q in questions], max(KS))
    ranks = []
    for q, row in zip(questions, top):
        ranks.append(first_hit_rank([
            _holds_answer(q, *chunk_spans[i])
            for i in row
        ]))
    results["bm25s[same chunks]"] = hit_metrics(ranks, KS)
    return {
        "dataset": "SQuAD v1.1 dev: 48 articles as 48 documents, paragraphs joined by blank lines",
        "questions": len(questions),
        "sample": "all questions" if not n or n >= 10570 else f"random.Random(0).sample of {n}",
        "hit": "a returned chunk (top-10 over the whole corpus) contains a gold answer span's offsets",
        "metrics": "recall@k = share of questions with a hit in the top k; MRR over the top 10",
        "chunking": "longrag sentence-aligned chunks (blingfire sentences, ~128 MiniLM word-pieces)",
        "details": extra,
        "results": results,
    }


def squad_product_retrievers(n: int, retrievers: list[str], work: Path, backend: str) -> dict[str, dict]:
    """The product's own retrievers through ``Corpus.search`` one question at a time (the path a
    user's query takes), on the same corpus and questions as :func:`squad_retrieval`."""
    articles, questions = load_squad()
    if n and n < len(questions):
        questions = random.Random(0).sample(questions, n)
    corpus, doc_ids, _ = squad_corpus(articles, work / f"squad-{backend}")
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    out = {}
    for retriever in retrievers:
        ranks, t0 = [], time.perf_counter()
        for i, q in enumerate(questions):
            hits = corpus.search(q.question, k=max(KS), retriever=retriever)
            ranks.append(first_hit_rank([_holds_answer(q, doc_index.get(h.doc_id), h.start, h.end) for h in hits]))
            if i % 1000 == 0:
                log.info("squad %s: %d/%d", retriever, i, len(questions))
        res = hit_metrics(ranks, KS)
        res["ms_per_query"] = round((time.perf_counter() - t0) * 1000 / len(questions), 1)
        out[f"longrag {retriever} (Corpus.search)"] = res
        log.info("squad %s: %s", retriever, res)
    return out


# -- BEIR-style sets -----------------------------------------------------------------------------
def _passage(title: str, text: str) -> str:
    return f"{title}. {text}" if title else text


def beir_retrieval(name: str, data: BeirSet, backends: list[str]) -> dict:
    from longrag.models.registry import load_embedder
    from longrag.retrieval.embed import Embedder
    from longrag.retrieval.index import VectorIndex

    doc_ids = list(data.corpus)
    passages = [_passage(*data.corpus[d]) for d in doc_ids]
    qids = list(data.queries)
    qtexts = [data.queries[q] for q in qids]
    k = 10
    runs: dict[str, list[list[str]]] = {}
    timing: dict[str, float] = {}
    for backend in backends:
        emb = Embedder(load_embedder(backend=backend, device="cpu"))
        t0 = time.perf_counter()
        vecs = emb.encode(passages)
        timing[f"embed_seconds[{backend}]"] = round(time.perf_counter() - t0, 1)
        index = VectorIndex(emb.dim, use_gpu=False)
        index.add(np.arange(len(doc_ids)), vecs)
        _, ids = index.search(emb.encode(qtexts), k)
        runs[f"longrag_dense[{backend}]"] = [[doc_ids[i] for i in row if i >= 0] for row in ids]
    search = _bm25(passages)
    runs["bm25s"] = [[doc_ids[i] for i in row] for row in search(qtexts, k)]
    results = {}
    for system, ranked in runs.items():
        rec = [recall_at_k(dedupe(r), data.qrels[q], k) for q, r in zip(qids, ranked)]
        nd = [ndcg_at_k(dedupe(r), data.qrels[q], k) for q, r in zip(qids, ranked)]
        results[system] = {"recall@10": round(float(np.mean(rec)), 4), "ndcg@10": round(float(np.mean(nd)), 4),
                           "queries": len(qids)}
    return {"dataset": name, "passages": len(doc_ids), "queries": len(qids), "passage_text": "title. text",
            "metrics": "recall@10 (share of judged-relevant found), nDCG@10 with the qrels' grades as gains "
                       "(hand-written, tested in tests/bench/test_metrics.py)",
            "details": timing, "results": results}


# -- ingestion throughput -----------------------------------------------------------------------
def ingest_throughput(book: str, backends: list[str]) -> dict:
    from longrag.config import Settings
    from longrag.services.corpus import Corpus

    data = (DATASETS / "gutenberg" / book).read_bytes()
    out = {}
    for backend in backends:
        _use_backend(backend)
        tmp = Path(tempfile.mkdtemp(prefix="longrag-ingest-"))
        try:
            corpus = Corpus(settings=Settings(data_dir=tmp))
            corpus.embedder.encode(["warm up"])  # model load is not ingestion
            t0 = time.perf_counter()
            res = corpus.ingest_bytes(data, book)
            sec = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out[backend] = {"seconds": round(sec, 1), "sentences": res.n_sentences, "chunks": res.n_chunks,
                        "sentences_per_s": round(res.n_sentences / sec, 1)}
        log.info("ingest %s: %s", backend, out[backend])
    return {"book": book, "bytes": len(data), "path": "Corpus.ingest_bytes (parse, segment, chunk, embed, index, store)",
            "results": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="squad,hotpot,cranfield,ingest")
    ap.add_argument("--squad-n", type=int, default=0, help="questions (0: all 10,570)")
    ap.add_argument("--backends", default="", help="embed backends to compare (default: the default + torch)")
    ap.add_argument("--query-backends", default="", help="squad: extra query encoders against the same chunks")
    ap.add_argument("--retrievers", default="hybrid,situated", help="squad-product: Corpus.search retrievers")
    ap.add_argument("--book", default="pg64317_the_great_gatsby.txt")
    ap.add_argument("--work", type=Path, default=WORK / "e2e")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(2)
    default = _default_backend()
    backends = [b for b in args.backends.split(",") if b] or dedupe([default, "torch"])
    parts = args.only.split(",")
    common = {"hardware": hardware(), "default_embed_backend": default, "embedder": "all-MiniLM-L6-v2"}
    if "squad" in parts:
        write_result("core_squad_retrieval", {**common, **squad_retrieval(args.squad_n, backends, args.work,
                                                                     [b for b in args.query_backends.split(",") if b])})
    if "squad-product" in parts:  # adds rows to the SQuAD result written by the "squad" part
        import json

        from bench.common import RESULTS

        _use_backend(backends[0])
        prev = json.loads((RESULTS / "core_squad_retrieval.json").read_text())
        prev["results"].update(squad_product_retrievers(args.squad_n, args.retrievers.split(","), args.work,
                                                         backends[0]))
        prev.pop("benchmark", None)
        prev.pop("written_at", None)
        write_result("core_squad_retrieval", prev)
    if "hotpot" in parts:
        write_result("core_hotpot_retrieval", {**common, **beir_retrieval(
            "HotpotQA dev distractor, BEIR view (paragraph gold)", load_hotpot_beir(), backends[:1])})
    if "cranfield" in parts:
        write_result("core_cranfield_retrieval", {**common, **beir_retrieval(
            "Cranfield 1400 (graded qrels; query ids = ordinal position in cran.qry)", load_cranfield(), backends[:1])})
    if "ingest" in parts:
        write_result("core_ingest", {**common, **ingest_throughput(args.book, backends)})


if __name__ == "__main__":
    main()
