"""CFIC through the product's QA pipeline: latency against ``plain`` mode, cold and warm.

CFIC's latency goal compares *extraction* latency with retrieval + answer generation
alone. This run measures it where a user meets it: SQuAD v1.1 dev part-2 articles ingested into
a real :class:`Corpus`, questions asked through :class:`QAPipeline` on one decoder, one question
at a time, side by side:

* ``plain``: the product's default mode (default retriever, top-k chunks, answer generation);
* ``cfic``: ``mode="cfic"`` with the whole article in the decoder's window (the product
  default). The first question on an article reads the article (cold); later questions reuse
  its KV cache (warm) and prefill only themselves;
* ``cfic_regions``: ``mode="cfic"`` with ``doc_tokens`` set (regions around the retrieved
  sentences, chosen per question, so nothing is reused).

Per question it records the answer's ``timings`` and whether the evidence holds the gold
answer (hit@1 / hit@3 over the returned evidence, in order). Articles are the shortest of part 2
so that each fits SmolLM2's 8K window. Command::

    LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.cfic_service --articles 3 --questions 4
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cfic import contains_answer
from bench.common import DATASETS, hardware, set_threads, write_result


def shortest_articles(n_articles: int, n_questions: int, seed: int) -> list[dict[str, Any]]:
    """The ``n_articles`` shortest part-2 articles with ``n_questions`` sampled questions each."""
    data = json.loads((DATASETS / "squad_v1.1" / "dev-v1.1.part2of2.json").read_text())["data"]
    data = sorted(data, key=lambda a: sum(len(p["context"]) for p in a["paragraphs"]))[:n_articles]
    rng = random.Random(seed)
    out = []
    for art in data:
        parts, qs, pos = [], [], 0
        for p in art["paragraphs"]:
            parts.append(p["context"])
            for qa in p["qas"]:
                spans = [(pos + x["answer_start"], pos + x["answer_start"] + len(x["text"])) for x in qa["answers"]]
                qs.append({"question": qa["question"], "answers": spans})
            pos += len(p["context"]) + 2
        out.append({"title": art["title"], "text": "\n\n".join(parts), "questions": rng.sample(qs, k=min(n_questions, len(qs)))})
    return out


def hits(evidence: list, answers: list[tuple[int, int]], doc_id: str) -> dict[str, bool]:
    spans = [(e.start, e.end) for e in evidence if e.doc_id == doc_id]
    return {"hit@1": any(contains_answer(s, answers) for s in spans[:1]),
            "hit@3": any(contains_answer(s, answers) for s in spans[:3])}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float | None:
        return round(statistics.median(values), 1) if values else None

    out: dict[str, Any] = {}
    for system in ("plain", "cfic", "cfic_regions"):
        rs = [r[system] for r in rows if system in r]
        if not rs:
            continue
        out[system] = {"n": len(rs), "hit@1": round(sum(r["hit@1"] for r in rs) / len(rs), 3),
                       "hit@3": round(sum(r["hit@3"] for r in rs) / len(rs), 3),
                       "total_ms_median": med([r["timings"]["total_ms"] for r in rs])}
        if system != "plain":
            for label, sel in (("all", rs), ("cold", [r for r in rs if not r["document_cached"]]),
                               ("warm", [r for r in rs if r["document_cached"]])):
                if sel:
                    out[system][f"evidence_ms_median_{label}"] = med([r["evidence_ms"] for r in sel])
                    out[system][f"n_{label}"] = len(sel)
    ratios: dict[str, Any] = {}
    for system in ("cfic", "cfic_regions"):
        for label in ("all", "cold", "warm"):
            per = [r[system]["evidence_ms"] / r["plain"]["timings"]["total_ms"] for r in rows
                   if system in r and (label == "all" or r[system]["document_cached"] == (label == "warm"))]
            if per:
                ratios[f"{system}_{label}"] = {"median": round(statistics.median(per), 3),
                                               "max": round(max(per), 3), "n": len(per)}
    out["evidence_ms_over_plain_total_ms"] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", default="smollm2-135m-instruct")
    ap.add_argument("--articles", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4, help="questions per article")
    ap.add_argument("--region-tokens", type=int, default=384, help="doc_tokens of the cfic_regions system (0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cfic_service")
    args = ap.parse_args()
    set_threads(args.threads)

    from longrag.config import Settings
    from longrag.services.corpus import Corpus
    from longrag.services.qa import QAPipeline, Question

    t_start = time.perf_counter()
    result: dict[str, Any] = {"hardware": hardware(), "args": vars(args), "command": "python -m bench.cfic_service " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(settings=Settings(data_dir=Path(tmp)))
        pipe = QAPipeline(corpus, decoder_name=args.decoder)
        for art in shortest_articles(args.articles, args.questions, args.seed):
            doc_id = corpus.ingest_bytes(art["text"].encode(), f"{art['title']}.txt", title=art["title"]).doc_id
            assert corpus.text(doc_id) == art["text"]
            for q in art["questions"]:
                row: dict[str, Any] = {"article": art["title"], "question": q["question"]}
                systems = [("plain", {}), ("cfic", {})]
                if args.region_tokens:
                    systems.append(("cfic_regions", {"doc_tokens": args.region_tokens}))
                for name, options in systems:
                    mode = "plain" if name == "plain" else "cfic"
                    ans = pipe.ask(Question(q["question"], mode=mode, doc_ids=[doc_id], options=options))
                    rec = {"answer": ans.answer, "timings": ans.timings, **hits(ans.evidence, q["answers"], doc_id)}
                    if mode == "cfic":
                        rec["evidence_ms"] = ans.timings["retrieval_ms"] + ans.timings.get("extraction_ms", 0.0)
                        rec["document_cached"] = ans.stats["cfic_document_cached"]
                        rec["prompt_tokens"] = ans.stats["cfic_prompt_tokens"]
                    row[name] = rec
                rows.append(row)
                print(f"{len(rows)} {art['title'][:20]} plain {row['plain']['timings']['total_ms']:.0f} ms | cfic "
                      f"{row['cfic']['evidence_ms']:.0f} ms cached={row['cfic']['document_cached']} "
                      f"({row['cfic']['prompt_tokens']} tok) | {time.perf_counter() - t_start:.0f}s", flush=True)
                result.update(rows=rows, summary=summarize(rows), wall_s=round(time.perf_counter() - t_start, 1))
                write_result(args.out, result)


if __name__ == "__main__":
    main()
