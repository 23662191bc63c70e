"""SentenceKV vs full KV, StreamingLLM and SnapKV at the same budget, side by side in one run.

    .venv/bin/python -m bench.sentencekv                      # ~25 min (--time-budget 1500 s)
    .venv/bin/python -m bench.sentencekv --quick --out sentencekv_quick   # smoke run, ~5 min
    .venv/bin/python -m bench.sentencekv --needles 12 --lengths 8000 --threads 2 --out sentencekv_needles

Model: SmolLM2-135M-Instruct (8K window) on CPU; Qwen2.5-0.5B at 8k prefill takes ~70 s on
an idle machine here, far too slow for this many prompts on the shared CPU. Every prompt is
prefilled ONCE up to its last 32 tokens; each method then finishes the prefill (the last 32
tokens: SnapKV's observation window) from that shared prefix and decodes, so the methods see
exactly the same prompt and prefix KV, and the timings are taken in the same minutes.
Samples run in priority order until the time budget is spent (the JSON lists those run):
- needle in a Gutenberg haystack at several depths (our own needles: random 5-digit codes);
- perplexity of a Gutenberg continuation (teacher forcing);
- SQuAD v1.1 questions whose paragraph sits among distractor paragraphs of other articles,
  and L-Eval natural_question documents cut to the window around the answer (``--leval``)
  (correct = a normalized gold answer appears in the output);
- per-token decode latency (every decode forward) and SentenceKV's overhead breakdown;
- the per-document cache: time to first token of a 2nd question vs the 1st.
Writes bench/results/<out>.json.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import DATASETS, hardware, set_threads, write_result
from bench.metrics import normalize_answer

MODEL = "smollm2-135m-instruct"
METHODS = ("full", "sentencekv", "snapkv", "streaming", "sentencekv_sentret")


# -- data -------------------------------------------------------------------------------------
def gutenberg_bodies() -> list[tuple[str, str]]:
    out = []
    for p in sorted((DATASETS / "gutenberg").glob("pg*.txt")):
        text = p.read_text(errors="ignore")
        a = text.find("*** START OF")
        b = text.find("*** END OF")
        if a >= 0:
            text = text[text.find("\n", a) + 1 : b if b > a else None]
        out.append((p.stem, re.sub(r"[ \t]+", " ", text.replace("\r", ""))))
    return out


def text_of_tokens(tok: Any, text: str, start_char: int, n_tokens: int) -> str:
    """About ``n_tokens`` tokens of ``text`` from ``start_char`` (cut at a token boundary)."""
    piece = text[start_char : start_char + n_tokens * 8]
    offs = tok(piece, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return piece[: offs[min(n_tokens, len(offs)) - 1][1]]


# -- one method on one shared prefix ---------------------------------------------------------
class Runner:
    def __init__(self, dec: Any, budget: int, ratio: float, sink: int, recent: int) -> None:
        from bench import sentencekv_variants as peers  # registers the snapkv and streaming policies
        from longrag.generation import sentencekv as skv

        self.skv = skv
        self.peers = peers
        self.dec = dec
        self.cfgs = {p: skv.SentenceKVConfig(budget=budget, retention_ratio=ratio, sink=sink, recent=recent,
                                             retention="token", policy=p) for p in ("sentencekv", "snapkv", "streaming")}
        self.cfgs["sentencekv_sentret"] = skv.SentenceKVConfig(
            budget=budget, retention_ratio=ratio, sink=sink, recent=recent, retention="sentence")
        self.cfg = self.cfgs["sentencekv"]
        self.tail = self.cfg.window

    def shared_prefix(self, ids: list[int]):
        cache = self.skv.new_cache(self.dec.model, self.dec.tokenizer, self.cfg, timing=True)
        cache.begin_prefill(ids)
        t0 = time.perf_counter()
        self.skv.feed_prompt(self.dec.model, cache, ids[: -self.tail])
        return cache, (time.perf_counter() - t0) * 1000

    def finish(self, method: str, prefix, ids: list[int]):
        """(cache, logits) of ``method`` after the whole prompt."""
        model = self.dec.model
        if method == "full":
            dc = self.peers.to_dynamic(prefix)
            with torch.inference_mode():
                out = model(input_ids=torch.tensor([ids[-self.tail:]]), cache=dc, use_cache=True, logits_to_keep=1)
            return dc, out.logits[:, -1, :]
        cache = self.peers.fork(prefix, self.cfgs[method])
        cache.timing = True
        return cache, self.skv.feed_prompt(model, cache, ids[-self.tail:])

    def step(self, method: str, cache, tid: int) -> torch.Tensor:
        if method == "full":
            with torch.inference_mode():
                out = self.dec.model(input_ids=torch.tensor([[tid]]), cache=cache, use_cache=True)
            return out.logits[:, -1, :]
        return self.skv.append(self.dec.model, cache, [tid], generated=True)

    def kv_bytes(self, method: str, cache) -> int:
        if method == "full":
            return sum(k.numel() * k.element_size() * 2 for k, _, _ in cache)
        return cache.kv_bytes()

    def greedy(self, method: str, cache, logits: torch.Tensor, max_new: int) -> tuple[str, list[float]]:
        from longrag.generation.decoding import stop_token_ids

        stops = stop_token_ids(self.dec.tokenizer)
        out, lat = [], []
        for i in range(max_new):
            tid = int(logits.argmax())
            if tid in stops:
                break
            out.append(tid)
            if i + 1 < max_new:
                t = time.perf_counter()
                logits = self.step(method, cache, tid)
                lat.append((time.perf_counter() - t) * 1000)
        return self.dec.tokenizer.decode(out, skip_special_tokens=True), lat


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


# -- tasks (one sample each; results accumulate in ``Acc``) ----------------------------------------
class Acc:
    """Per (task, length, method): lists of per-sample figures."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.breakdown: dict[str, dict[str, float]] = {}

    def add(self, task: str, length: int, method: str, **vals: float) -> None:
        slot = self.data.setdefault(f"{task}@{length}", {}).setdefault(method, {})
        for k, v in vals.items():
            slot.setdefault(k, []).extend(v if isinstance(v, list) else [v])

    def add_breakdown(self, length: int, stats: Any) -> None:
        b = self.breakdown.setdefault(str(length), {"rank_ms": 0.0, "gather_ms": 0.0, "attend_ms": 0.0,
                                                    "steps": 0, "sel_sum": 0.0, "sel_n": 0})
        b["rank_ms"] += stats.rank_ms
        b["gather_ms"] += stats.gather_ms
        b["attend_ms"] += stats.attend_ms
        b["steps"] += stats.steps
        b["sel_sum"] += sum(stats.selected_tokens)
        b["sel_n"] += len(stats.selected_tokens)


def needle_sample(run: Runner, acc: Acc, books, length: int, depth: float, rng: random.Random) -> None:
    from longrag.generation.prompts import answer_messages, encode_chat

    tok = run.dec.tokenizer
    name, body = books[rng.randrange(len(books))]
    code = str(rng.randrange(10000, 99999))
    needle = f" The secret passcode for the blue vault is {code}. "
    question = "What is the secret passcode for the blue vault?"
    overhead = len(encode_chat(tok, answer_messages(question, ""))) + 24
    hay = text_of_tokens(tok, body, rng.randrange(0, len(body) // 2), length - overhead)
    at = hay.find(". ", int(len(hay) * depth))
    at = at + 2 if at >= 0 else int(len(hay) * depth)
    ids = encode_chat(tok, answer_messages(question, hay[:at] + needle + hay[at:]))
    prefix, pms = run.shared_prefix(ids)
    line = []
    for m in METHODS:
        cache, logits = run.finish(m, prefix, ids)
        text, lat = run.greedy(m, cache, logits, 20)
        ok = int(code in text)
        acc.add("needle", length, m, correct=ok, kv_bytes=run.kv_bytes(m, cache), decode_ms=lat,
                prompt_tokens=len(ids))
        if m == "sentencekv":
            acc.add_breakdown(length, cache.stats)
        line.append(f"{m}={ok} ({_median(lat):.0f} ms/tok)")
    print(f"  needle {length} depth {depth:.2f} ({name}, prefill {pms / 1000:.0f}s): " + " ".join(line), flush=True)


def ppl_sample(run: Runner, acc: Acc, books, length: int, cont: int, rng: random.Random) -> None:
    tok = run.dec.tokenizer
    name, body = books[rng.randrange(len(books))]
    text = text_of_tokens(tok, body, rng.randrange(0, len(body) // 2), length + cont)
    all_ids = tok(text, add_special_tokens=False)["input_ids"][: length + cont]
    ids, target = all_ids[:length], all_ids[length:]
    prefix, _ = run.shared_prefix(ids)
    line = []
    for m in METHODS:
        cache, logits = run.finish(m, prefix, ids)
        nll, lat = [], []
        for i, t in enumerate(target):
            nll.append(float(-torch.log_softmax(logits.float(), dim=-1)[0, t]))
            if i + 1 < len(target):
                t0 = time.perf_counter()
                logits = run.step(m, cache, t)
                lat.append((time.perf_counter() - t0) * 1000)
        acc.add("ppl", length, m, nll=nll, decode_ms=lat, kv_bytes=run.kv_bytes(m, cache))
        if m == "sentencekv":
            acc.add_breakdown(length, cache.stats)
        line.append(f"{m}={math.exp(sum(nll) / len(nll)):.2f}")
    print(f"  ppl {length} ({name}): " + " ".join(line), flush=True)


_SQUAD: list[Any] = []


def squad_sample(run: Runner, acc: Acc, length: int, rng: random.Random) -> None:
    from bench.data import load_squad
    from longrag.generation.prompts import answer_messages, encode_chat

    tok = run.dec.tokenizer
    if not _SQUAD:
        _SQUAD.extend(load_squad())
    articles, questions = _SQUAD
    paragraphs = [(a_i, p) for a_i, art in enumerate(articles) for p in art.text.split("\n\n")]
    q = rng.choice(questions)
    art = articles[q.article]
    s, _ = q.spans[0]
    gold = next(p for p in art.text.split("\n\n") if art.text.find(p) <= s < art.text.find(p) + len(p))
    overhead = len(encode_chat(tok, answer_messages(q.question, ""))) + 16
    room = length - overhead - len(tok(gold, add_special_tokens=False)["input_ids"])
    distract: list[str] = []
    while room > 0:
        a_i, p = rng.choice(paragraphs)
        if a_i == q.article:
            continue
        need = len(tok(p, add_special_tokens=False)["input_ids"]) + 2
        if need > room:
            break
        distract.append(p)
        room -= need
    distract.insert(rng.randrange(len(distract) + 1), gold)
    qa_sample(run, acc, "squad", length, q.question, "\n\n".join(distract), q.answers)


def qa_sample(run: Runner, acc: Acc, task: str, length: int, question: str, context: str,
              answers: list[str]) -> None:
    """One question over ``context``, every method; correct = a normalized gold answer appears."""
    from longrag.generation.prompts import answer_messages, encode_chat

    ids = encode_chat(run.dec.tokenizer, answer_messages(question, context))
    prefix, _ = run.shared_prefix(ids)
    golds = [normalize_answer(a) for a in answers]
    line = []
    for m in METHODS:
        cache, logits = run.finish(m, prefix, ids)
        text, _ = run.greedy(m, cache, logits, 16)
        ok = int(any(g and g in normalize_answer(text) for g in golds))
        acc.add(task, length, m, correct=ok, prompt_tokens=len(ids))
        line.append(f"{m}={ok}")
    print(f"  {task} {length} ({question[:40]!r}, {len(ids)} tokens): " + " ".join(line), flush=True)


def leval_sample(run: Runner, acc: Acc, length: int, rng: random.Random) -> None:
    """An L-Eval natural_question item: a window of the document around its verbatim answer,
    truncated to the context length (the window placement is random: bench.rapid's items)."""
    from bench.rapid import leval_items
    from longrag.generation.prompts import answer_messages, encode_chat

    overhead = len(encode_chat(run.dec.tokenizer, answer_messages("x" * 80, ""))) + 24
    item = leval_items(run.dec.tokenizer, length - overhead, 1, rng.randrange(10**6))[0]
    qa_sample(run, acc, "leval_nq", length, item.question, item.context, item.answers)


def reuse_task(dec: Any, books, length: int, budget: int) -> dict[str, Any]:
    """TTFT of the 1st question (prefill + compress + persist) vs a 2nd (load + append)."""
    from longrag.config import Settings
    from longrag.services.kvcache import DocumentKVCache

    tok = dec.tokenizer
    name, body = books[0]
    doc = text_of_tokens(tok, body, len(body) // 3, length - 200)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), sentencekv_budget=budget, max_new_tokens=8)
        store = DocumentKVCache(settings, dec)
        span = (0, len(doc))
        q1 = store.answer("doc", span, doc, "Who is speaking in this passage?", max_new_tokens=4)
        q2 = store.answer("doc", span, doc, "Where does the story take place?", max_new_tokens=4)
        size = sum(p.stat().st_size for p in (Path(tmp) / "kvcache").rglob("*.safetensors"))
    first, later = q1.result.ttft_ms, q2.result.ttft_ms
    return {"document_tokens": q1.result.prompt_tokens, "ttft_first_ms": round(first, 1),
            "ttft_second_ms": round(later, 1), "ratio_second_over_first": round(later / first, 3),
            "reused": [q1.reused, q2.reused], "answers": [q1.result.text, q2.result.text], "stored_bytes": size, "book": name,
            "retention": settings.sentencekv.retention}


# -- main -------------------------------------------------------------------------------------
def summarize(acc: Acc) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, per_method in acc.data.items():
        task, length = key.split("@")
        slot = out.setdefault(length, {}).setdefault(task, {})
        for m, vals in per_method.items():
            r: dict[str, Any] = {}
            if "correct" in vals:
                r["accuracy"] = round(sum(vals["correct"]) / len(vals["correct"]), 3)
                r["n"] = len(vals["correct"])
            if "nll" in vals:
                r["perplexity"] = round(math.exp(sum(vals["nll"]) / len(vals["nll"])), 3)
                r["tokens"] = len(vals["nll"])
            if vals.get("decode_ms"):
                r["decode_ms_per_token_median"] = round(_median(vals["decode_ms"]), 2)
                r["decode_steps"] = len(vals["decode_ms"])
            if "kv_bytes" in vals:
                r["kv_bytes_held"] = int(sum(vals["kv_bytes"]) / len(vals["kv_bytes"]))
            if "prompt_tokens" in vals:
                r["prompt_tokens_mean"] = int(sum(vals["prompt_tokens"]) / len(vals["prompt_tokens"]))
            slot[m] = r
    for length, b in acc.breakdown.items():
        steps = max(b["steps"], 1)
        out.setdefault(length, {})["sentencekv_overhead_ms_per_token"] = {
            "rank_and_row_mask": round(b["rank_ms"] / steps, 2),
            "gather_rows": round(b["gather_ms"] / steps, 2),
            "attention_over_selection": round(b["attend_ms"] / steps, 2),
            "tokens_attended_per_head_mean": round(b["sel_sum"] / max(b["sel_n"], 1), 1),
            "steps": b["steps"],
            "note": "summed over all layers per decode step; the rest of a step is the model's own layers",
        }
    return out


def plan(lengths: list[int], quick: bool) -> list[tuple[str, int, float]]:
    """Samples in priority order: the largest context first (the goals), then spread out."""
    top = max(lengths)
    if quick:
        return [("needle", top, 0.5), ("ppl", top, 0), ("squad", top, 0), ("reuse", top, 0)]
    small = sorted(lengths)[:-1]
    order = [("needle", top, 0.5), ("reuse", top, 0)]
    order += [("needle", L, 0.5) for L in small]
    order += [("ppl", small[0] if small else top, 0), ("squad", small[0] if small else top, 0)]
    order += [("needle", top, 0.2)] + [("ppl", L, 0) for L in small[1:]] + [("ppl", top, 0)]
    for L in small:
        order += [("needle", L, 0.2), ("needle", L, 0.8), ("squad", L, 0)]
    order += [("needle", top, 0.8), ("squad", top, 0)]
    for L in small:
        order += [("needle", L, 0.35), ("needle", L, 0.65)]
    return order


def goals_at(per_length: dict[str, Any], length: int, reuse: dict[str, Any] | None) -> dict[str, Any]:
    """The acceptance goals at ``length``, for the paper's SentenceKV and the product's default
    (whole-sentence retention, ``sentencekv_sentret``)."""
    top = per_length.get(str(length), {})

    def get(task: str, m: str, key: str):
        return top.get(task, {}).get(m, {}).get(key)

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    out: dict[str, Any] = {
        "context": length,
        "needle_accuracy": {m: get("needle", m, "accuracy") for m in METHODS},
        "needle_n": get("needle", "full", "n"),
        "reuse_ttft_ratio": reuse["ratio_second_over_first"] if reuse else None,
    }
    for m in ("sentencekv", "sentencekv_sentret"):
        out[m] = {
            "kv_ratio_held_over_full": ratio(get("needle", m, "kv_bytes_held"), get("needle", "full", "kv_bytes_held")),
            "decode_speedup_vs_full": ratio(get("needle", "full", "decode_ms_per_token_median"),
                                            get("needle", m, "decode_ms_per_token_median")),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8000])
    ap.add_argument("--continuation", type=int, default=32)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--ratio", type=float, default=2.0)
    ap.add_argument("--sink", type=int, default=32)
    ap.add_argument("--recent", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on the oversubscribed shared CPU, 2 threads thrash)")
    ap.add_argument("--time-budget", type=float, default=1500.0,
                    help="seconds; samples run in priority order until this is spent")
    ap.add_argument("--seed", type=int, default=0, help="haystacks, needles, questions")
    ap.add_argument("--no-reuse", action="store_true", help="skip the per-document cache sample")
    ap.add_argument("--reuse", action="store_true", help="a focused run: the per-document cache sample at the largest length")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--needles", type=int, default=0,
                    help="a focused run: N needles at the largest length, depths spread evenly over 0.05-0.95")
    ap.add_argument("--ppl", type=int, default=0, help="a focused run: N perplexity samples at the largest length")
    ap.add_argument("--squad", type=int, default=0, help="a focused run: N SQuAD-with-distractors questions at the largest length")
    ap.add_argument("--leval", type=int, default=0, help="a focused run: N L-Eval natural_question items at the largest length")
    ap.add_argument("--out", default="sentencekv")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.continuation = [1024], 8
    set_threads(args.threads)
    from longrag.models.registry import load_decoder

    dec = load_decoder(MODEL, device="cpu")
    books = gutenberg_bodies()
    run = Runner(dec, args.budget, args.ratio, args.sink, args.recent)
    rng = random.Random(args.seed)
    acc = Acc()
    reuse: dict[str, Any] | None = None
    done: list[str] = []
    t_start = time.perf_counter()
    samples = plan(args.lengths, args.quick)
    if args.needles or args.ppl or args.squad or args.leval or args.reuse:  # a focused run at the largest length
        top = max(args.lengths)
        samples = [("needle", top, round(0.05 + 0.9 * i / max(args.needles - 1, 1), 3)) for i in range(args.needles)]
        samples += [("ppl", top, 0)] * args.ppl + [("squad", top, 0)] * args.squad + [("leval", top, 0)] * args.leval
        samples += [("reuse", top, 0)] if args.reuse else []
    for task, length, depth in samples:
        if task == "reuse" and args.no_reuse:
            continue
        if time.perf_counter() - t_start > args.time_budget:
            print(f"time budget spent; skipping the rest from {task}@{length}", flush=True)
            break
        t0 = time.perf_counter()
        if task == "needle":
            needle_sample(run, acc, books, length, depth, rng)
        elif task == "ppl":
            ppl_sample(run, acc, books, length, args.continuation, rng)
        elif task == "squad":
            squad_sample(run, acc, length, rng)
        elif task == "leval":
            leval_sample(run, acc, length, rng)
        else:
            print(f"  per-document cache reuse at {length}", flush=True)
            reuse = reuse_task(dec, books, length, args.budget)
            print(f"  {reuse}", flush=True)
        done.append(f"{task}@{length}" + (f":{depth}" if task == "needle" else "") +
                    f" ({time.perf_counter() - t0:.0f}s)")
    per_length = summarize(acc)
    goals = goals_at(per_length, max(args.lengths), reuse)
    write_result(args.out, {
        "model": MODEL, "device": "cpu", "hardware": hardware(),
        "params": {"budget_tau": args.budget, "retention_ratio_r": args.ratio, "sink": args.sink,
                   "recent": args.recent, "observation_window": 32, "pool_kernel": 7,
                   "max_sentence_tokens": run.cfg.max_sentence_tokens, "threads": args.threads,
                   "continuation_tokens": args.continuation, "time_budget_s": args.time_budget},
        "samples_run": done,
        "seed": args.seed,
        "method_notes": {
            "full": "transformers DynamicCache, sdpa",
            "sentencekv": "r*tau retained at prefill, tau selected by sentence per head per step + sink + recent",
            "snapkv": "tau (+ sink + 32-token window) retained at prefill, all attended, no selection",
            "streaming": "StreamingLLM: sink + last (tau + recent) tokens",
            "sentencekv_sentret": "SentenceKV with whole-sentence prefill retention (our option, not the paper's)",
            "shared_prefill": "each prompt prefilled once up to its last 32 tokens; methods finish from it",
            "kv_bytes_held": "KV bytes in the cache after decoding (SentenceKV: retained store; its "
                             "one-forward prefill peaks at one full layer + the other layers compressed)",
            "decode_ms": "wall time of one decode forward (needle: greedy answer tokens; ppl: teacher forcing)",
        },
        "per_length": per_length,
        "doc_cache_reuse": reuse,
        "goals_at_max_length": goals,
        "wall_s": round(time.perf_counter() - t_start, 1),
    })


if __name__ == "__main__":
    main()
