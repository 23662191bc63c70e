"""RAPID vs its peers, side by side on the same questions and the same pre-filled target cache.

For each context length (default 2k, 4k, 8k decoder tokens) the bench builds long contexts from
SQuAD v1.1 articles (the gold paragraph's article around the answer, padded with paragraphs of
other articles as distractors) and from L-Eval ``natural_question`` documents (a window around
a verbatim answer). Every method answers the same question from the same target KV cache
(prefilled once per question, cropped back after each method), greedy, so decode throughput
and answer F1 are compared on equal terms:

- ``target``: target-only autoregressive decoding over the long context;
- ``rapid_eta0`` / ``rapid_eta{E}``: RAPID, drafter = same weights on the retrieved context (its
  one-token steps on the ``--drafter-weights`` twin, default fp16 as in the product; with fp16 or
  bf16 also ``rapid_eta{E}_fp32``: the same with the fp32 weights, for comparison;
  ``rapid_eta{E}_tail{T}`` for each ``--tails`` value other than the default 0.1; with
  ``--consensus`` also ``..._consensus``: the same with consensus acceptance; with ``--residual``
  also ``..._residual``: greedy rejections emit the rejection residual's argmax);
- ``self_spec``: naive self-speculation, drafter = same weights on the last N prompt tokens;
- ``prompt_lookup``: transformers' ``generate(..., prompt_lookup_num_tokens=10)``;
- ``rag_only``: the drafter alone (retrieved context only);
- ``hybrid``: the product's hybrid drafter: n-gram lookup (>= ``--min-ngram`` tokens, default 1) in
  the drafter's prompt (retrieved context + question), drafted from when the match is unambiguous
  (``--min-agreement``) and cut to the cost-aware length (``DraftLength``, ``--draft-length cost``),
  the LLM drafter otherwise, its drafts also cut to their cost-aware length (0: a plain target
  step); with ``--min-ngram`` > 1 also ``hybrid_ngram1`` (1-gram matches used too) for comparison;
- ``hybrid_whole``: ``hybrid`` with n-grams looked up in the whole target context when the
  retrieved one has no match (``LONGRAG_RAPID_NGRAM_WHOLE_CONTEXT``);
- ``hybrid_fixed``: the same drafter with fixed lengths (every match drafted from, as long as it
  goes; LLM drafts up to gamma with the confidence stop), the product's behaviour before;
- ``ngram_cost``: n-gram lookup (3..1 tokens) in the whole target prompt with the
  unambiguous-match rule and the cost-aware length, no LLM drafter (``prompt_lookup`` made
  cost-aware);
- ``hybrid_warm`` / ``hybrid_whole_warm`` / ``ngram_cost_warm``: ``hybrid`` / ``hybrid_whole`` /
  ``ngram_cost`` with each answer's cost-aware
  estimates starting from the previous question's (``DraftLength.carried``, per context length),
  as the product does with ``LONGRAG_RAPID_WARM_START``; the questions run in the listed order;
- ``hybrid_plus``: n-gram lookup in the retrieved context, then in the whole target context
  (``LONGRAG_RAPID_NGRAM_WHOLE_CONTEXT``), the LLM drafter only while its measured rounds beat
  plain target steps (``bench.rapid_variants.AdaptiveHybridDrafter``, an ablation);
- with ``--sentencekv``: ``skv_target`` (target-only decoding on a SentenceKV cache of the same
  prompt, the product's ``LONGRAG_SENTENCEKV_*`` settings) and ``rapid_skv_eta0`` /
  ``rapid_skv_eta{E}`` (RAPID with that SentenceKV target); their ``speedup_vs_skv_target`` compares
  them with ``skv_target``.

A cost model is measured on each question's own caches (target decode step and verification
of 2, 4 and gamma + 1 tokens at the question's context length, drafter step at the drafter's) and
predicts RAPID's speed-up over target-only from the measured acceptance; the JSON lists the
prediction next to the measurement and the fitted crossover length.

``--task exam`` asks L-Eval's multiple-choice questions instead (TOEFL lecture transcripts and
QuALITY stories, 3.4k-7k tokens, each over its whole document; the question's options are in the
question, followed by "Answer with the letter of the correct option."): ``em`` and ``f1`` are then
the exam accuracy (``bench.metrics.exam_choice``), and a document's questions run one after another
so its prompt head is prefilled once.

Run: ``.venv/bin/python -m bench.rapid`` (defaults: SmolLM2-135M, 4 questions per length,
24 new tokens, 1 torch thread). Writes ``bench/results/rapid.json`` after every question.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATASETS, RESULTS, hardware, set_threads, write_result
from bench.data import load_squad
from bench.metrics import best_em_f1, exam_choice, exam_options


@dataclass
class Item:
    qid: str
    source: str
    question: str
    answers: list[str]
    context: str
    options: dict[str, str] | None = None  # a multiple-choice question's options (--task exam)

    def score(self, answer: str) -> tuple[float, float]:
        """(EM, F1) of an answer; for an exam question both are its accuracy (the option it picks)."""
        if self.options is None:
            return best_em_f1(answer, self.answers)
        right = float(exam_choice(answer, self.options) == self.answers[0])
        return right, right


def _window(tok, text: str, anchor: int, length: int, rng: random.Random) -> str:
    offs = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offs) <= length:
        return text
    centre = next((i for i, (a, _) in enumerate(offs) if a >= anchor), len(offs) - 1)
    first = centre - int(length * rng.uniform(0.2, 0.8))
    first = max(0, min(first, len(offs) - length))
    return text[offs[first][0] : offs[first + length - 1][1]]


def squad_items(tok, length: int, n: int, seed: int) -> list[Item]:
    articles, questions = load_squad(DATASETS)
    rng = random.Random(seed)
    out = []
    for q in rng.sample(questions, n * 3):
        if len(out) >= n:
            break
        art = articles[q.article]
        text = art.text
        others = [a for i, a in enumerate(articles) if i != q.article]
        while len(tok(text, add_special_tokens=False)["input_ids"]) < length:  # distractors
            extra = rng.choice(others)
            paras = extra.text.split("\n\n")
            text = text + "\n\n" + "\n\n".join(rng.sample(paras, min(4, len(paras))))
        ctx = _window(tok, text, q.spans[0][0], length, rng)
        if not any(a in ctx for a in q.answers):
            continue
        out.append(Item(q.qid, "squad", q.question, list(q.answers), ctx))
    return out


def leval_items(tok, length: int, n: int, seed: int) -> list[Item]:
    rng = random.Random(seed + 1)
    rows = [json.loads(line) for line in (DATASETS / "leval" / "natural_question.jsonl").read_text().splitlines()]
    cands = []
    for d, row in enumerate(rows):
        for i, (q, a) in enumerate(zip(row["instructions"], row["outputs"])):
            a = a.strip()
            if 0 < len(a) <= 60 and row["input"].find(a) >= 0:
                cands.append((d, i, q, a))
    rng.shuffle(cands)
    out = []
    for d, i, q, a in cands[:n]:
        text = rows[d]["input"]
        ctx = _window(tok, text, text.find(a), length, rng)
        out.append(Item(f"nq-{d}-{i}", "leval_nq", q, [a], ctx))
    return out


EXAM_TASKS = ("tpo", "quality")  # L-Eval's single-letter multiple-choice tasks
EXAM_INSTRUCTION = "Answer with the letter of the correct option."


@functools.cache
def _exam_rows(task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATASETS / "leval" / f"{task}.jsonl").read_text().splitlines()]


def exam_reference(task: str, doc: int, i: int) -> tuple[str, dict[str, str], str]:
    """An exam question's text, its lettered options and the gold letter."""
    row = _exam_rows(task)[doc]
    question = row["instructions"][i].strip()
    return question, exam_options(question), row["outputs"][i].strip().lstrip("(")[:1]


def exam_items(tok, length: int, n: int, seed: int, per_doc: int) -> list[Item]:
    """Multiple-choice questions over whole L-Eval documents (TOEFL lectures and QuALITY stories).

    The seed orders the documents (the two tasks alternating) and the questions inside each; up to
    ``per_doc`` questions are taken from a document before the next, and a document's questions
    stay together so its prompt head is prefilled once. A document longer than ``length`` tokens
    is cut to its first ``length`` tokens.
    """
    rng = random.Random(seed + 2)
    by_task = []
    for task in EXAM_TASKS:
        rows = _exam_rows(task)
        order = list(range(len(rows)))
        rng.shuffle(order)
        by_task.append([(task, d, rows[d]) for d in order])
    out: list[Item] = []
    for task, d, row in (x for pair in zip(*by_task) for x in pair):
        ids = tok(row["input"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        context = row["input"] if len(ids) <= length else row["input"][: ids[length - 1][1]]
        picks = list(range(len(row["instructions"])))
        rng.shuffle(picks)
        for i in picks[:per_doc]:
            question, options, letter = exam_reference(task, d, i)
            if len(options) < 2 or letter not in options:
                continue
            out.append(Item(f"{task}-{d}-{i}", f"leval_{task}", f"{question}\n{EXAM_INSTRUCTION}", [letter], context,
                            options))
            if len(out) >= n:
                return out
    return out


def chunk_scorer(embedder, question: str, text: str, tok, sub_tokens: int = 128):
    """Score 512-token chunks by the best cosine of their 128-token pieces (MiniLM reads 256)."""
    qv = embedder.encode([question])[0]

    def score(chunks):
        offs = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        pieces, owner = [], []
        for ci, c in enumerate(chunks):
            for s in range(c.tok_start, c.tok_end, sub_tokens):
                e = min(s + sub_tokens, c.tok_end)
                pieces.append(text[offs[s][0] : offs[e - 1][1]])
                owner.append(ci)
        vecs = embedder.encode(pieces)
        sims = vecs @ qv
        best = [-1.0] * len(chunks)
        for ci, sim in zip(owner, sims):
            best[ci] = max(best[ci], float(sim))
        return best

    return score


class _Clock:
    """A transformers streamer that only timestamps what it receives (the prompt comes first)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, int]] = []

    def put(self, value) -> None:
        self.times.append((time.perf_counter(), int(value.numel())))

    def end(self) -> None:
        pass


def hf_prompt_lookup(model, tok, ids, it: Item, args) -> dict[str, Any]:
    import torch

    from longrag.generation.decoding import stop_token_ids

    clock = _Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=False,
                             prompt_lookup_num_tokens=args.gamma, streamer=clock,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
    total = (time.perf_counter() - t0) * 1000
    stops = stop_token_ids(tok)
    out = [int(t) for t in gen[0, len(ids):]]
    out = out[: next((i for i, t in enumerate(out) if t in stops), len(out))]
    text = tok.decode(out, skip_special_tokens=True).strip()
    em, f1 = it.score(text)
    news = clock.times[1:]  # [0] is the prompt
    first_t, first_n = news[0] if news else (t0, 0)
    rest = sum(n for _, n in news[1:])
    steady = (news[-1][0] - first_t) if len(news) > 1 else 0.0
    return {"answer": text, "em": em, "f1": round(f1, 4), "tokens": len(out), "total_ms_with_prefill": round(total, 1),
            "steady_tokens": rest, "steady_ms": round(steady * 1000, 1),
            "steady_tokens_per_s": round(rest / steady, 3) if steady > 0 else None}


def timed(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decoder", default="smollm2-135m-instruct")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8000])
    ap.add_argument("--n", type=int, default=4, help="questions per length (half SQuAD, half L-Eval NQ)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--gamma", type=int, default=10)
    ap.add_argument("--etas", type=float, nargs="+", default=[5.0], help="eta values besides 0")
    ap.add_argument("--tails", type=float, nargs="+", default=[0.1],
                    help="tail guards for the eta > 0 methods (names gain _tail{t} unless t = 0.1, the default)")
    ap.add_argument("--consensus", action="store_true",
                    help="also run each eta > 0 method with consensus acceptance (a draft token the plain target "
                         "accepts is kept at any eta; names gain _consensus)")
    ap.add_argument("--residual", action="store_true",
                    help="also run each eta > 0 method with residual replacement (a rejected draft token is "
                         "replaced by the argmax of the rejection residual, not of p_hat; names gain _residual)")
    ap.add_argument("--budget", type=int, default=1024, help="drafter budget floor (max(budget, s/24))")
    ap.add_argument("--retriever", default="product", choices=["product", "minilm"],
                    help="how the drafter's chunks are chosen: product = each context ingested into a "
                         "temporary corpus and its chunks ranked as the rapid mode does (configured "
                         "retriever, threshold on dense cosines); minilm = the earlier runs' scorer "
                         "(MiniLM cosine of 128-token pieces)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="drafter chunk threshold (default: the product's LONGRAG_RAPID_THRESHOLD; "
                         "0.2 with --retriever minilm, as in the earlier runs)")
    ap.add_argument("--min-confidence", type=float, default=0.3)
    ap.add_argument("--min-ngram", type=int, default=1,
                    help="hybrid: shortest n-gram match used (shorter matches go to the LLM drafter); "
                         "with > 1 the run adds hybrid_ngram1 for comparison")
    ap.add_argument("--draft-length", default="cost", choices=["cost", "fixed"],
                    help="hybrid: draft lengths, cost-aware (DraftLength: n-gram and LLM drafts) or fixed "
                         "(as long as the match; the LLM up to gamma)")
    ap.add_argument("--min-agreement", type=float, default=0.5,
                    help="hybrid / ngram_cost: draft from a match only when this share of the n-gram's "
                         "occurrences continue the same way")
    ap.add_argument("--verify-slope", type=float, default=0.15, help="DraftLength's prior verification slope")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="methods not to run (e.g. hybrid_plus self_spec); any but target, the baseline")
    ap.add_argument("--drafter-weights", default="fp16", choices=["fp32", "fp16", "bf16"],
                    help="the LLM drafter's one-token linear weights (generation/precision.py)")
    ap.add_argument("--sentencekv", action="store_true", help="also RAPID on a SentenceKV target (and its baseline)")
    ap.add_argument("--self-spec-tokens", type=int, default=0, help="naive drafter window (0: = drafter budget)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hf-pl-max", type=int, default=2048, help="run transformers' prompt lookup up to this length")
    ap.add_argument("--retrieval-only", action="store_true",
                    help="only choose each question's drafter context and record whether it holds the answer")
    ap.add_argument("--pool", nargs="+", metavar="NAME",
                    help="run nothing: pool the questions of these bench/results files into --out")
    ap.add_argument("--distinct", action="store_true",
                    help="--pool: a question drawn by more than one run counts once (the first run listed)")
    ap.add_argument("--exclude", nargs="+", metavar="NAME", default=[],
                    help="--pool: leave out the questions (id and length) that these results files hold, e.g. those "
                         "a setting was chosen on")
    ap.add_argument("--task", default="extractive", choices=["extractive", "exam"],
                    help="extractive: SQuAD + L-Eval NQ, F1/EM; exam: L-Eval TOEFL + QuALITY multiple choice over "
                         "whole documents, accuracy (reported as em and f1)")
    ap.add_argument("--per-doc", type=int, default=4, help="--task exam: questions per document at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="rapid")
    args = ap.parse_args()
    if any(e <= 0 for e in args.etas):  # eta 0 always runs as rapid_eta0; a second one would share its name
        ap.error(f"--etas takes values above 0 (eta 0 always runs as rapid_eta0), got {args.etas}")
    if args.pool:
        write_result(args.out, pool(args.pool, args.gamma, distinct=args.distinct, exclude=args.exclude))
        return
    set_threads(args.threads)
    from longrag.config import Settings

    workdir = tempfile.TemporaryDirectory(prefix="longrag-rapid-bench-")  # removed when the run ends
    settings = Settings(data_dir=Path(workdir.name))
    if args.threshold is None:
        args.threshold = settings.rapid.threshold if args.retriever == "product" else 0.2

    from longrag.generation.prompts import answer_messages, encode_chat
    from longrag.generation.rapid import (
        DraftLength, HybridDrafter, KVState, LearntLengths, LMDrafter, NgramDrafter, RapidConfig, autoregressive,
        rapid_generate, retrieve_context,
    )
    from bench.rapid_variants import AdaptiveHybridDrafter
    from longrag.models.registry import load_decoder, load_embedder
    from longrag.retrieval.embed import Embedder

    dec = load_decoder(args.decoder)
    tok, model = dec.tokenizer, dec.model
    dmodel = load_decoder(args.decoder, weights=args.drafter_weights).model  # the LLM drafter
    compare32 = args.drafter_weights != "fp32"
    if args.retriever == "product":
        from longrag.services.corpus import Corpus
        from longrag.services.modes.rapid import chunk_hits, overlap_scorer

        corpus = Corpus(settings=settings)
    else:
        embedder = Embedder(load_embedder())

    def scorers(it: Item) -> tuple[Any, Any]:
        """(ranking, relevance) of the context's 512-token chunks for the question."""
        if args.retriever == "minilm":
            return chunk_scorer(embedder, it.question, it.context, tok), None
        doc_id = corpus.ingest_bytes(it.context.encode(), f"{it.qid}-{len(it.context)}.txt", title=it.qid).doc_id
        if corpus.text(doc_id) != it.context:
            raise RuntimeError(f"{it.qid}: the stored text differs from the context; chunk offsets would not match")
        ranked, dense = chunk_hits(corpus, it.question, doc_id)
        return overlap_scorer(ranked, 0), None if dense is None else overlap_scorer(dense, 0)
    cfg0 = RapidConfig(gamma=args.gamma, eta=0.0, max_new_tokens=args.max_new_tokens)
    def rapid_name(eta: float, tail: float, consensus: bool = False, residual: bool = False) -> str:
        return "rapid_eta0" if eta == 0 else (f"rapid_eta{eta:g}" + ("" if tail == 0.1 else f"_tail{tail:g}")
                                               + ("_consensus" if consensus else "") + ("_residual" if residual else ""))

    rapid_variants = [(0.0, 0.1, False, False),  # (eta, tail, consensus, residual)
                      *[(e, t, c, r) for e in args.etas for t in args.tails
                        for c in ((False, True) if args.consensus else (False,))
                        for r in ((False, True) if args.residual else (False,))]]
    methods = ["target", *[rapid_name(*v) for v in rapid_variants],
               *([f"rapid_eta{args.etas[-1]:g}_fp32"] if compare32 and args.etas else []), "self_spec", "prompt_lookup",
               "prompt_lookup_hf", "ngram_cost", "ngram_cost_warm", "rag_only", "hybrid", "hybrid_warm", "hybrid_whole",
               "hybrid_whole_warm", "hybrid_fixed", "hybrid_ngram1", "hybrid_plus",
               *(["skv_target", "rapid_skv_eta0", *[f"rapid_skv_eta{e:g}" for e in args.etas]] if args.sentencekv else [])]
    methods = [m for m in methods if m == "target" or m not in args.skip]
    rows: list[dict[str, Any]] = []
    meta = {
        "hardware": hardware(),
        "decoder": args.decoder,
        "settings": {**vars(args), "packed_linears": dec.extra.get("packed_linears", 0)},
        "methods": methods,
        "note": ("greedy decoding; decode throughput excludes the shared target prefill (each method starts "
                 "from the same pre-filled target cache); drafter prefills are timed separately "
                 "(drafter_prefill_ms). Sample: --n questions per length, "
                 + ("half SQuAD v1.1 dev (article + distractor articles), half L-Eval natural_question (window "
                    "around a verbatim answer)." if args.task == "extractive" else
                    "L-Eval tpo and quality multiple-choice questions (up to --per-doc per document, the "
                    "document's questions consecutive, its prompt head prefilled once: target_prefill_ms is "
                    "then the question's part) over the whole document (its first L tokens if longer); em = f1 "
                    "= accuracy: the answer's first standalone option letter, else the one option whose text "
                    "it contains (bench.metrics.exam_choice), equals the gold letter.")),
    }
    t_start = time.perf_counter()
    learnt = LearntLengths()  # the *_warm methods carry their estimates across questions, as the product does

    def lengths_for(name: str, kind: str, length: int, make):
        if not name.endswith("_warm"):
            return make()
        d = learnt.start((name, kind, length), make)
        learnt.keep((name, kind, length), d)  # the same object learns during this answer
        return d

    if args.task == "exam":  # a document's questions one after another: its prompt head stays in the cache
        jobs = [(L, it) for L in args.lengths for it in exam_items(tok, L, args.n, args.seed, args.per_doc)]
    else:
        per_length = {L: [x for pair in zip(squad_items(tok, L, (args.n + 1) // 2, args.seed),
                                            leval_items(tok, L, (args.n + 1) // 2, args.seed)) for x in pair][: args.n]
                      for L in args.lengths}
        jobs = [(L, per_length[L][i]) for i in range(args.n) for L in args.lengths if i < len(per_length[L])]
    target, target_context = None, None
    if True:
        for length, it in jobs:
            tq = time.perf_counter()
            ids = encode_chat(tok, answer_messages(it.question, it.context))
            rank, relevance = scorers(it)
            retrieved = retrieve_context(it.context, tok, rank, budget_tokens=args.budget, threshold=args.threshold,
                                         relevance=relevance)
            draft_ids = encode_chat(tok, answer_messages(it.question, retrieved.text)) if not retrieved.empty else []
            retrieval = {"qid": it.qid, "source": it.source, "length": length,
                         "retrieved_has_answer": (any(a in retrieved.text for a in it.answers)
                                                  if it.options is None else None),
                         "drafter_chunks": [c.index for c in retrieved.chunks],
                         "top_relevance": retrieved.top_relevance,
                         "retrieval_ms": round((time.perf_counter() - tq) * 1000, 1)}
            if args.retrieval_only:
                rows.append(retrieval)
                print(retrieval, flush=True)
                continue
            n_self = args.self_spec_tokens or retrieved.budget_tokens
            self_ids = ids[-n_self:]
            if target is None or it.context != target_context:  # the same document: its prefix is reused
                target, target_context = KVState(model), it.context
            t0 = time.perf_counter()
            target.prefill(ids)
            prefill_ms = (time.perf_counter() - t0) * 1000
            row: dict[str, Any] = {
                **retrieval, "context_tokens": len(ids), "drafter_tokens": len(draft_ids),
                "drafter_budget": retrieved.budget_tokens, "target_prefill_ms": round(prefill_ms, 1), "methods": {},
            }

            def record(name: str, res, extra: dict | None = None) -> None:
                em, f1 = it.score(res.text)
                n_tok = len(res.token_ids)
                decode_ms = res.total_ms
                row["methods"][name] = {
                    "answer": res.text, "em": em, "f1": round(f1, 4), "tokens": n_tok, "token_ids": res.token_ids,
                    "decode_ms": round(decode_ms, 1),
                    "tokens_per_s": round(n_tok / (decode_ms / 1000), 3) if n_tok else 0.0,
                    "steady_tokens": max(0, n_tok - res.first_tokens),
                    "steady_ms": round(res.total_ms - res.ttft_ms, 1),
                    **({k: v for k, v in res.stats().items() if k in ("acceptance_rate", "mean_accepted", "drafted",
                                                                      "accepted", "rounds", "target_calls",
                                                                      "ngram_rounds")}
                       if hasattr(res, "stats") else {}),
                    **(extra or {}),
                }
                target.crop(len(ids) - 1)

            record("target", autoregressive(target, tok, ids, config=cfg0))
            # the drafter's own cache, prefilled once (timed) and reused by every LLM-drafter method
            dstate = KVState(dmodel)
            if draft_ids:
                t0 = time.perf_counter()
                dstate.prefill(draft_ids)
                row["drafter_prefill_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            for eta, tail, consensus, residual in rapid_variants:
                name = rapid_name(eta, tail, consensus, residual)
                if name not in methods:
                    continue
                cfg = RapidConfig(gamma=args.gamma, eta=eta, tail=tail, consensus=consensus, residual=residual,
                                  max_new_tokens=args.max_new_tokens)
                drafter = LMDrafter(dmodel, draft_ids, min_confidence=args.min_confidence, state=dstate) if draft_ids else None
                record(name, rapid_generate(target, drafter, tok, ids, config=cfg))
            if args.etas and f"rapid_eta{args.etas[-1]:g}_fp32" in methods and draft_ids:  # fp32 drafter, same cache
                cfg = RapidConfig(gamma=args.gamma, eta=args.etas[-1], max_new_tokens=args.max_new_tokens)
                d32 = LMDrafter(model, draft_ids, min_confidence=args.min_confidence, state=KVState(model))
                d32.state.prefill(draft_ids)
                record(f"rapid_eta{args.etas[-1]:g}_fp32", rapid_generate(target, d32, tok, ids, config=cfg))
                row["cost"] = {"drafter_step_ms_fp32": timed(lambda: (d32.state.feed(ids[-1:]),
                                                                      d32.state.crop(len(draft_ids) - 1)), 3)}
                del d32
            if "self_spec" in methods:
                sstate = KVState(dmodel)
                sstate.prefill(self_ids)
                record("self_spec", rapid_generate(target, LMDrafter(dmodel, self_ids, min_confidence=args.min_confidence,
                                                                     state=sstate), tok, ids, config=cfg0))
                del sstate
            # prompt-lookup decoding: n-gram lookup in the whole target prompt (ours, same cache) ...
            if "prompt_lookup" in methods:
                record("prompt_lookup", rapid_generate(target, NgramDrafter(ids, max_ngram=2), tok, ids, config=cfg0))
            for name in ("ngram_cost", "ngram_cost_warm"):  # ... with the unambiguous-match rule and the
                if name in methods:  # cost-aware length (_warm: estimates carried across questions)
                    record(name, rapid_generate(target, NgramDrafter(
                        ids, min_agreement=args.min_agreement,
                        length=lengths_for(name, "ngram", length, lambda: DraftLength(slope=args.verify_slope))),
                        tok, ids, config=cfg0))
            # ... and transformers' own (its assisted-decoding path re-runs the prefill, so only up to
            # --hf-pl-max tokens; its decode time is taken from streamer timestamps after the first round)
            if length <= args.hf_pl_max and "prompt_lookup_hf" in methods:
                row["methods"]["prompt_lookup_hf"] = hf_prompt_lookup(model, tok, ids, it, args)
            if draft_ids:
                if "rag_only" in methods:
                    rag = autoregressive(dstate, tok, draft_ids, config=cfg0)
                    em, f1 = it.score(rag.text)
                    row["methods"]["rag_only"] = {"answer": rag.text, "em": em, "f1": round(f1, 4),
                                                  "tokens": len(rag.token_ids), "decode_ms": round(rag.total_ms, 1),
                                                  "steady_tokens": max(0, len(rag.token_ids) - 1),
                                                  "steady_ms": round(rag.total_ms - rag.ttft_ms, 1),
                                                  "tokens_per_s": round(len(rag.token_ids) / (rag.total_ms / 1000), 3)
                                                  if rag.token_ids else 0.0}
                for name, min_n, policy in (("hybrid", args.min_ngram, args.draft_length),
                                            ("hybrid_warm", args.min_ngram, "cost"),
                                            ("hybrid_whole", args.min_ngram, args.draft_length),
                                            ("hybrid_whole_warm", args.min_ngram, "cost"),
                                            ("hybrid_fixed", args.min_ngram, "fixed"),
                                            ("hybrid_ngram1", 1, args.draft_length)):
                    if name not in methods or (name == "hybrid_ngram1" and args.min_ngram == 1) or (
                            name == "hybrid_fixed" and args.draft_length == "fixed"):
                        continue
                    ngram = NgramDrafter(draft_ids, min_ngram=min_n,
                                         fallback_ids=ids if name.startswith("hybrid_whole") else (),
                                         **(dict(min_agreement=args.min_agreement,
                                                 length=lengths_for(name, "ngram", length,
                                                                    lambda: DraftLength(slope=args.verify_slope)))
                                            if policy == "cost" else {}))
                    hyb = HybridDrafter(ngram, LMDrafter(dmodel, draft_ids, min_confidence=args.min_confidence,
                                                         state=dstate),
                                        llm_length=lengths_for(name, "llm", length,
                                                               lambda: DraftLength.for_llm(args.verify_slope))
                                        if policy == "cost" else None)
                    record(name, rapid_generate(target, hyb, tok, ids, config=cfg0))
                # n-grams from the retrieved context, then the whole target context; the LLM only while it pays
                if "hybrid_plus" in methods:
                    plus = AdaptiveHybridDrafter(
                        NgramDrafter(draft_ids, min_ngram=1, fallback_ids=ids),
                        LMDrafter(dmodel, draft_ids, min_confidence=args.min_confidence, state=dstate))
                    record("hybrid_plus", rapid_generate(target, plus, tok, ids, config=cfg0),
                           {"llm_rounds": plus.tally["llm"][0], "plain_steps": plus.tally["plain"][0]})
            if args.sentencekv:  # the same prompt in a SentenceKV cache (prefilled once, reused by crop)
                from longrag.config import get_settings
                from longrag.generation.sentencekv import SentenceKVState
                from longrag.services.kvcache import skv_config

                t0 = time.perf_counter()
                sk = SentenceKVState.from_prompt(model, tok, skv_config(get_settings()), ids)
                row["skv_prefill_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                row["skv_kv_bytes"] = sk.cache.kv_bytes()
                res = autoregressive(sk, tok, ids, config=cfg0)
                record("skv_target", res)
                for eta in [0.0, *args.etas]:
                    cfg = RapidConfig(gamma=args.gamma, eta=eta, max_new_tokens=args.max_new_tokens)
                    drafter = LMDrafter(dmodel, draft_ids, min_confidence=args.min_confidence,
                                        state=dstate) if draft_ids else None
                    sk.prefill(ids)
                    res = rapid_generate(sk, drafter, tok, ids, config=cfg)
                    record(f"rapid_skv_eta{eta:g}", res)
                    row["methods"][f"rapid_skv_eta{eta:g}"]["same_as_skv_target"] = (
                        res.token_ids == row["methods"]["skv_target"]["token_ids"])
                del sk
            # cost model on this question's caches
            probe = ids[-1:]
            k1 = args.gamma + 1

            def step() -> None:
                target.feed(probe)
                target.crop(len(ids) - 1)

            def verify_step(k: int) -> None:
                target.feed(probe * k, keep=k)
                target.crop(len(ids) - 1)

            by_k = {k: timed(lambda k=k: verify_step(k), 2) for k in sorted({2, 4, k1})}
            row["cost"] = {**row.get("cost", {}), "target_step_ms": timed(step, 3), "verify_ms": by_k[k1],
                           "verify_ms_by_k": {str(k): v for k, v in by_k.items()}}
            if draft_ids:
                dl = len(dstate.tokens)

                def dstep() -> None:
                    dstate.feed(probe)
                    dstate.crop(dl)

                row["cost"]["drafter_step_ms"] = timed(dstep, 3)
            row["seconds"] = round(time.perf_counter() - tq, 1)
            rows.append(row)
            write_result(args.out, {**meta, "summary": summarise(rows, methods, args.gamma), "questions": rows})
            print(f"[{time.perf_counter() - t_start:7.0f}s] {length} {it.qid}: " + ", ".join(
                f"{m} {v.get('tokens_per_s') or v.get('steady_tokens_per_s') or 0:.2f}t/s f1={v['f1']:.2f}"
                + (f" acc={v['acceptance_rate']:.2f}" if "acceptance_rate" in v else "")
                for m, v in row["methods"].items()), flush=True)
    if args.retrieval_only:
        summary = {str(L): {"n": len(rs), "retrieved_has_answer": _mean(float(r["retrieved_has_answer"]) for r in rs
                                                                      if r["retrieved_has_answer"] is not None),
                            "target_only_fallbacks": sum(not r["drafter_chunks"] for r in rs)}
                   for L in args.lengths if (rs := [r for r in rows if r["length"] == L])}
        write_result(args.out, {**meta, "summary": summary, "questions": rows,
                                "bench_seconds": round(time.perf_counter() - t_start, 1)})
        return
    write_result(args.out, {**meta, "summary": summarise(rows, methods, args.gamma), "questions": rows,
                            "bench_seconds": round(time.perf_counter() - t_start, 1)})


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 4) if xs else None


def summarise(rows: list[dict], methods: list[str], gamma: int) -> dict[str, Any]:
    """Per length and method: mean F1/EM, decode tokens/s (total tokens / total time), acceptance,
    speed-up over target-only on the same questions; plus the cost model and its prediction."""
    out: dict[str, Any] = {}
    for length in sorted({r["length"] for r in rows}):
        rs = [r for r in rows if r["length"] == length]
        per: dict[str, Any] = {}
        for m in methods:
            ms = [r["methods"][m] for r in rs if m in r["methods"]]
            if not ms:
                continue
            timed_ms = [x for x in ms if "decode_ms" in x]
            tps = (sum(x["tokens"] for x in timed_ms) / max(1e-9, sum(x["decode_ms"] for x in timed_ms) / 1000)
                   if timed_ms else None)
            steady = sum(x["steady_tokens"] for x in ms) / max(1e-9, sum(x["steady_ms"] for x in ms) / 1000)
            d = {"n": len(ms), "f1": _mean(x["f1"] for x in ms), "em": _mean(x["em"] for x in ms),
                 "tokens_per_s": round(tps, 3) if tps is not None else None,
                 "steady_tokens_per_s": round(steady, 3)}
            if any("drafted" in x for x in ms):
                drafted = sum(x.get("drafted", 0) for x in ms)
                d["acceptance_rate"] = round(sum(x.get("accepted", 0) for x in ms) / drafted, 4) if drafted else None
                rounds = sum(x.get("rounds", 0) for x in ms)
                d["mean_accepted"] = round(sum(x.get("accepted", 0) for x in ms) / rounds, 3) if rounds else None
                d["drafted_per_round"] = round(drafted / rounds, 3) if rounds else None
            per[m] = d
        base = per.get("target", {}).get("tokens_per_s")
        sbase = per.get("target", {}).get("steady_tokens_per_s")
        kbase = per.get("skv_target", {}).get("tokens_per_s")
        for m, d in per.items():
            if kbase and m.startswith(("rapid_skv", "skv_target")) and d["tokens_per_s"]:
                d["speedup_vs_skv_target"] = round(d["tokens_per_s"] / kbase, 3)
        for m, d in per.items():
            d["speedup_vs_target"] = round(d["tokens_per_s"] / base, 3) if base and d["tokens_per_s"] else None
            d["steady_speedup_vs_target"] = round(d["steady_tokens_per_s"] / sbase, 3) if sbase else None
        cost = {k: _mean(r["cost"].get(k) for r in rs)
                for k in ("target_step_ms", "verify_ms", "drafter_step_ms", "drafter_step_ms_fp32")}
        pred = {}
        for m in ("rapid_eta0", "hybrid", "hybrid_ngram1", *[x for x in methods if x.startswith("rapid_eta") and x != "rapid_eta0"]):
            d = per.get(m)
            dstep = cost["drafter_step_ms_fp32"] if m.endswith("_fp32") else cost["drafter_step_ms"]
            if not d or not d.get("drafted_per_round") or not dstep:
                continue
            # tokens per round = accepted + 1; cost per round = drafted * drafter step (n-gram rounds ~0)
            # + one verification; speed-up = target step * tokens per round / cost per round
            llm_share = 1.0
            if m.startswith("hybrid"):
                ng = sum(r["methods"][m].get("ngram_rounds", 0) for r in rs if m in r["methods"])
                llm_share = 1 - ng / max(1, sum(r["methods"][m].get("rounds", 0) for r in rs if m in r["methods"]))
            per_round = d["drafted_per_round"] * dstep * llm_share + verify_cost(rs, d["drafted_per_round"] + 1)
            pred[m] = round(cost["target_step_ms"] * (d["mean_accepted"] + 1) / per_round, 3)
        out[str(length)] = {"methods": per, "cost_ms": cost, "predicted_speedup": pred}
    out["crossover"] = crossover(out, gamma)
    return out


def pool(names: list[str], gamma: int, *, distinct: bool = False,
         exclude: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Pool the questions of earlier result files (``bench/results/<name>.json``): per length and
    method, the figures over the questions that ran both that method and target-only, so each
    speed-up compares the same questions measured side by side. ``distinct``: a question (id and
    length) that several runs drew is kept from the first run listed only. ``exclude``: questions
    (id and length) held by these result files are left out."""
    def load(n: str) -> dict[str, Any]:
        return json.loads((RESULTS / f"{n}.json").read_text())

    runs = [load(n) for n in names]
    if len({r["decoder"] for r in runs}) != 1:
        raise SystemExit(f"--pool: the runs used different decoders: {sorted({r['decoder'] for r in runs})}")
    seen = {(q["qid"], q["length"]) for n in exclude for q in load(n)["questions"]}
    rows = [q for r in runs for q in r["questions"] if (q["qid"], q["length"]) not in seen]
    if distinct:
        rows = list({(q["qid"], q["length"]): q for q in reversed(rows)}.values())[::-1]
    methods = list(dict.fromkeys(m for r in rows for m in r["methods"]))
    out: dict[str, Any] = {}
    for m in methods:
        both = [r for r in rows if m in r["methods"] and "target" in r["methods"]]
        for length, v in summarise(both, ["target", m], gamma).items():
            if length.isdigit():
                out.setdefault(length, {})[m] = v["methods"][m]
    for length, per in out.items():  # answer quality: paired F1 differences with a bootstrap 95% interval
        rs = [r for r in rows if str(r["length"]) == length]
        for m in per:
            twin = m.removesuffix("_residual").removesuffix("_consensus")  # the same eta and tail, as published
            bases = ("target", "rag_only", *([twin] if twin != m else []))
            per[m]["f1_diff"] = {b: f1_difference(rs, m, b) for b in bases if b != m}
        exam = [r for r in rs if r.get("source", "").removeprefix("leval_") in EXAM_TASKS]
        if exam:
            per["exam_letters"] = exam_letters(exam)
    return {"pooled": names, "distinct": distinct, "excluded": list(exclude), "decoder": runs[0]["decoder"],
            "questions": len(rows), "summary": out}


def exam_letters(rows: list[dict]) -> dict[str, Any]:
    """Exam questions: the share of each gold letter (= the accuracy of always answering it, the
    chance level to compare with) and how often each method picked each letter."""
    def reference(qid: str) -> tuple[str, dict[str, str], str]:
        task, doc, i = qid.rsplit("-", 2)  # exam_items' ids: task-document-question
        return exam_reference(task, int(doc), int(i))

    refs = {r["qid"]: reference(r["qid"]) for r in rows}
    gold = [refs[r["qid"]][2] for r in rows]
    picked: dict[str, Counter[str]] = {}
    for r in rows:
        for m, v in r["methods"].items():
            picked.setdefault(m, Counter())[exam_choice(v["answer"], refs[r["qid"]][1]) or "none"] += 1
    return {"n": len(rows), "always_letter_accuracy": {x: round(gold.count(x) / len(gold), 4) for x in "ABCD"},
            "picked": {m: dict(sorted(c.items())) for m, c in picked.items()}}


def f1_difference(rows: list[dict], method: str, base: str) -> dict[str, Any] | None:
    """Mean F1 of ``method`` minus ``base`` over the questions that ran both, the counts of
    questions each won, and a paired bootstrap 95% confidence interval of the mean difference."""
    from scipy.stats import bootstrap

    d = np.array([r["methods"][method]["f1"] - r["methods"][base]["f1"] for r in rows
                  if method in r["methods"] and base in r["methods"]])
    if len(d) < 2:
        return None
    out = {"n": len(d), "mean": round(float(d.mean()), 4), "wins": int((d > 1e-9).sum()),
           "losses": int((d < -1e-9).sum())}
    if np.ptp(d) > 0:
        ci = bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=5000, method="percentile",
                       random_state=np.random.default_rng(0)).confidence_interval
        out["ci95"] = [round(float(ci.low), 4), round(float(ci.high), 4)]
    return out


def verify_cost(rows: list[dict], k: float) -> float:
    """Mean verification cost of ``k`` tokens, interpolated over the sizes measured on each question."""
    vals = []
    for r in rows:
        by_k = {int(a): b for a, b in (r["cost"].get("verify_ms_by_k") or {}).items()}
        if not by_k:
            vals.append(r["cost"]["verify_ms"])
            continue
        ks = sorted(by_k)
        vals.append(float(np.interp(k, ks, [by_k[x] for x in ks])))
    return float(np.mean(vals))


def crossover(summary: dict[str, Any], gamma: int) -> dict[str, Any]:
    """Fit step(s) = a + b s and verify(s) = c + d s over the measured lengths; with the pooled
    acceptance of RAPID (eta 0), find the smallest s where the predicted speed-up reaches 1."""
    pts = [(int(k), v) for k, v in summary.items() if k.isdigit()]
    if len(pts) < 2:
        return {"note": "needs two lengths or more"}
    s = np.array([p for p, _ in pts], dtype=float)
    step = np.array([v["cost_ms"]["target_step_ms"] for _, v in pts])
    ver = np.array([v["cost_ms"]["verify_ms"] for _, v in pts])
    dstep = np.mean([v["cost_ms"]["drafter_step_ms"] for _, v in pts if v["cost_ms"]["drafter_step_ms"]])
    b, a = np.polyfit(s, step, 1)
    d, c = np.polyfit(s, ver, 1)
    acc = [v["methods"].get("rapid_eta0", {}) for _, v in pts]
    acc = [x for x in acc if x.get("drafted_per_round")]
    if not acc:
        return {"note": "no RAPID rounds"}
    k = float(np.mean([x["drafted_per_round"] for x in acc]))
    m = float(np.mean([x["mean_accepted"] for x in acc]))
    grid = np.arange(512, 131072, 256)
    speed = (a + b * grid) * (m + 1) / (k * dstep + c + d * grid)
    over = grid[speed >= 1.0]
    return {
        "target_step_ms": f"{a:.2f} + {b * 1000:.4f} * s/1000",
        "verify_ms": f"{c:.2f} + {d * 1000:.4f} * s/1000",
        "drafter_step_ms": round(float(dstep), 2),
        "drafted_per_round": round(k, 3),
        "accepted_per_round": round(m, 3),
        "predicted_crossover_tokens": int(over[0]) if len(over) else None,
        "predicted_speedup_at_32k": round(float((a + b * 32768) * (m + 1) / (k * dstep + c + d * 32768)), 3),
    }


if __name__ == "__main__":
    main()
