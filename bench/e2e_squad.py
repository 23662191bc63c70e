"""End-to-end answer EM/F1 on a fixed SQuAD v1.1 dev sample: longrag ``plain`` vs a LangChain peer.

Both systems answer the same questions over the same 48 ingested articles (open retrieval over
the whole corpus, top-4 passages) with the same decoder, prompt and greedy decoding:

- ``longrag``: :class:`QAPipeline` in ``plain`` mode with the default retriever (sentence-aligned chunks);
- ``langchain``: ``RecursiveCharacterTextSplitter`` + the same MiniLM through LangChain's
  ``HuggingFaceEmbeddings`` + LangChain's ``FAISS`` store, passages in retrieval order;
- ``bm25`` (optional, ``--systems``): bm25s over the longrag chunks, same prompt.

Answers are appended to ``bench/results/e2e/<system>.jsonl`` as they come, so a run resumes
where it stopped. ``python -m bench.e2e_squad --n 300`` then summarises into
``bench/results/core_e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from bench.common import RESULTS, WORK, hardware, set_threads, write_result
from bench.data import SquadQuestion, load_squad, squad_sample
from bench.metrics import best_em_f1
from bench.squad_corpus import squad_corpus

log = logging.getLogger("bench.e2e")
SEED = 0
TOP_K = 4
LC_CHUNK_CHARS = 550  # ~ the 128 word-piece target of longrag's chunks
LC_OVERLAP = 50


def _done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["qid"]] = row
    return out


class LangChainPeer:
    """The plain LangChain RAG pipeline used as the peer."""

    def __init__(self, articles, decoder_name: str | None, cache: Path | None = None) -> None:
        from langchain_community.embeddings import HuggingFaceEmbeddings
        from langchain_community.vectorstores import FAISS
        from langchain_core.documents import Document
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from longrag.models.registry import load_decoder, resolve

        path, _ = resolve("all-minilm-l6-v2")
        emb = HuggingFaceEmbeddings(
            model_name=path, model_kwargs={"device": "cpu", "local_files_only": True},
            encode_kwargs={"normalize_embeddings": True},
        )
        splitter = RecursiveCharacterTextSplitter(chunk_size=LC_CHUNK_CHARS, chunk_overlap=LC_OVERLAP)
        docs = splitter.split_documents(
            [Document(page_content=a.text, metadata={"title": a.title}) for a in articles]
        )
        t0 = time.perf_counter()
        if cache is not None and (cache / "index.faiss").exists():
            self.store = FAISS.load_local(str(cache), emb, allow_dangerous_deserialization=True)
        else:
            self.store = FAISS.from_documents(docs, emb)
            if cache is not None:
                self.store.save_local(str(cache))
        self.index_seconds = time.perf_counter() - t0
        self.n_chunks = len(docs)
        self.decoder = load_decoder(decoder_name)

    def ask(self, question: str, max_new_tokens: int) -> dict:
        from longrag.generation.decoding import generate
        from longrag.generation.prompts import answer_messages, context_block, encode_chat

        t0 = time.perf_counter()
        docs = self.store.similarity_search(question, k=TOP_K)
        r_ms = (time.perf_counter() - t0) * 1000
        ids = encode_chat(self.decoder.tokenizer, answer_messages(question, context_block([d.page_content for d in docs])))
        gen = generate(self.decoder.model, self.decoder.tokenizer, ids, max_new_tokens=max_new_tokens)
        return {
            "answer": gen.text, "retrieval_ms": r_ms, "ttft_ms": r_ms + gen.ttft_ms,
            "total_ms": (time.perf_counter() - t0) * 1000, "prompt_tokens": gen.prompt_tokens,
            "passages": [d.page_content for d in docs],
        }


class Bm25Peer:
    """bm25s over longrag's own chunks, same prompt and decoder (retrieval swapped only)."""

    def __init__(self, corpus, decoder_name: str | None) -> None:
        import bm25s

        from longrag.models.registry import load_decoder

        self.corpus = corpus
        ids, texts = [], []
        for doc in corpus.list():
            text = corpus.text(doc.doc_id)
            for _, c in corpus.store.chunks(doc.doc_id):
                ids.append((doc.doc_id, c.start, c.end))
                texts.append(text[c.start:c.end])
        self.ids, self.texts = ids, texts
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self.decoder = load_decoder(decoder_name)

    def ask(self, question: str, max_new_tokens: int) -> dict:
        import bm25s

        from longrag.generation.decoding import generate
        from longrag.generation.prompts import answer_messages, context_block, encode_chat

        t0 = time.perf_counter()
        res, _ = self.retriever.retrieve(bm25s.tokenize([question], stopwords="en", show_progress=False),
                                         k=TOP_K, show_progress=False)
        hits = sorted(int(i) for i in res[0])
        r_ms = (time.perf_counter() - t0) * 1000
        passages = [self.texts[i] for i in hits]
        ids = encode_chat(self.decoder.tokenizer, answer_messages(question, context_block(passages)))
        gen = generate(self.decoder.model, self.decoder.tokenizer, ids, max_new_tokens=max_new_tokens)
        return {"answer": gen.text, "retrieval_ms": r_ms, "ttft_ms": r_ms + gen.ttft_ms,
                "total_ms": (time.perf_counter() - t0) * 1000, "prompt_tokens": gen.prompt_tokens,
                "passages": passages}


def summarise(rows: list[dict]) -> dict:
    def med(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(vals), 1) if vals else None

    n = len(rows)
    return {
        "questions": n,
        "em": round(sum(r["em"] for r in rows) / n, 4) if n else None,
        "f1": round(sum(r["f1"] for r in rows) / n, 4) if n else None,
        "answer_in_context": round(sum(r["gold_in_context"] for r in rows) / n, 4) if n else None,
        "median_retrieval_ms": med("retrieval_ms"),
        "median_ttft_ms": med("ttft_ms"),
        "median_total_ms": med("total_ms"),
        "median_prompt_tokens": med("prompt_tokens"),
    }


def run(n: int, systems: list[str], decoder_name: str | None, work: Path, summary_only: bool = False,
        max_articles: int = 0, tag: str = "") -> dict:
    from longrag.config import get_settings
    from longrag.services.qa import QAPipeline, Question

    set_threads(2)
    articles, questions = load_squad()
    if max_articles:  # smoke runs: a corpus of the first articles only
        articles = articles[:max_articles]
        questions = [q for q in questions if q.article < max_articles]
    sample: list[SquadQuestion] = squad_sample(questions, n, seed=SEED)
    out_dir = RESULTS / f"e2e{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = get_settings()
    decoder_name = decoder_name or settings.decoder
    info: dict = {}
    if not summary_only:
        corpus, _, ingest_s = squad_corpus(articles, work / f"squad{tag}-{settings.embed_backend}")
        info["longrag_ingest_seconds"] = round(ingest_s, 1)
        runners = {}
        if "longrag" in systems:
            pipe = QAPipeline(corpus, decoder_name=decoder_name)

            def ours(q: str, max_new: int) -> dict:
                ans = pipe.ask(Question(text=q, mode="plain", max_new_tokens=max_new))
                return {"answer": ans.answer, **ans.timings, "prompt_tokens": ans.stats.get("prompt_tokens"),
                        "passages": [h.text for h in pipe.corpus.search(q, k=TOP_K)]}

            runners["longrag"] = ours
        if "langchain" in systems:
            peer = LangChainPeer(articles, decoder_name, cache=work / f"langchain-faiss{tag}")
            info["langchain_chunks"] = peer.n_chunks
            info["langchain_index_seconds"] = round(peer.index_seconds, 1)
            runners["langchain"] = peer.ask
        if "bm25" in systems:
            runners["bm25"] = Bm25Peer(corpus, decoder_name).ask
        done = {s: _done(out_dir / f"{s}.jsonl") for s in systems}
        files = {s: open(out_dir / f"{s}.jsonl", "a", encoding="utf-8") for s in systems}
        try:
            for i, q in enumerate(sample):
                for s in systems:  # interleaved, so both systems see the same machine load
                    if q.qid in done[s]:
                        continue
                    res = runners[s](q.question, settings.max_new_tokens)
                    em, f1v = best_em_f1(res["answer"], q.answers)
                    ctx = " ".join(res.pop("passages"))
                    row = {"qid": q.qid, "question": q.question, "gold": list(q.answers), **res,
                           "em": em, "f1": f1v, "gold_in_context": any(a in ctx for a in q.answers)}
                    files[s].write(json.dumps(row, ensure_ascii=False) + "\n")
                    files[s].flush()
                    done[s][q.qid] = row
                if (i + 1) % 10 == 0:
                    log.info("%d/%d questions", i + 1, len(sample))
        finally:
            for f in files.values():
                f.close()
    wanted = {q.qid for q in sample}
    results = {}
    for s in systems:
        rows = [r for qid, r in _done(out_dir / f"{s}.jsonl").items() if qid in wanted]
        results[s] = summarise(rows)
    payload = {
        "dataset": "SQuAD v1.1 dev",
        "sample": {"questions": n, "seed": SEED, "how": "random.Random(0).sample over all 10,570 questions"},
        "setup": {
            "decoder": decoder_name, "prompt": "longrag.generation.prompts.answer_messages (same for all)",
            "decoding": f"greedy, max_new_tokens={settings.max_new_tokens}", "top_k": TOP_K,
            "retrieval_scope": f"all {len(articles)} articles (open retrieval over the corpus)",
            "longrag": f"plain mode, {settings.retriever} retriever (the default: RRF of situated vectors and BM25), sentence-aligned chunks (~{settings.chunk_tokens} word-pieces), MiniLM, FAISS",
            "langchain": f"RecursiveCharacterTextSplitter(chunk_size={LC_CHUNK_CHARS}, chunk_overlap={LC_OVERLAP}) + "
                         "HuggingFaceEmbeddings(MiniLM) + langchain_community FAISS",
            "bm25": "bm25s (English stopwords) over longrag's chunks",
            "embed_backend": settings.embed_backend,
            **info,
        },
        "metrics": "EM / F1 with the official SQuAD v1.1 normalisation (max over gold answers)",
        "hardware": hardware(),
        "results": results,
    }
    write_result(f"core_e2e{tag}", payload)
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--systems", default="longrag,langchain")
    ap.add_argument("--decoder", default=None)
    ap.add_argument("--work", type=Path, default=WORK / "e2e")
    ap.add_argument("--summary-only", action="store_true", help="summarise the JSONL files without running")
    ap.add_argument("--max-articles", type=int, default=0, help="smoke runs: only the first N articles")
    ap.add_argument("--tag", default="", help="suffix of the output names (smoke runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = run(args.n, args.systems.split(","), args.decoder, args.work, args.summary_only, args.max_articles, args.tag)
    print(json.dumps(res["results"], indent=2))


if __name__ == "__main__":
    main()
