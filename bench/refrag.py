"""REFRAG benchmark, side by side in one run -> bench/results/refrag.json.

1. TTFT at s context tokens (default 2k, 4k, 8k) of the held-out novel: full raw context vs
   REFRAG k = 8, 16, 32 with cached chunk embeddings (projector + decoder only) and uncached
   (decoder-tokenize -> chunk -> MiniLM -> projector -> decoder). Timing needs no trained
   weights: k without a trained projector use a random one of the same shape (said in the JSON).
2. Quality on the held-out novel: mean NLL (log-perplexity) of the next 256 tokens given s
   context tokens, for full context, REFRAG_k (trained projectors only), the last s/k raw tokens
   (the paper's acceptance test: same decoder input length) and no context.
3. RAG answer F1 on SQuAD v1.1 dev: the gold paragraph among distractor paragraphs of the same
   article; full raw context vs REFRAG (k = 16, query-aware expansion) vs the raw context
   truncated to REFRAG's decoder input length.

Decoder SmolLM2-135M-Instruct (the projector's), fp32, CPU. Run:
    LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.refrag
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import string
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from bench.common import hardware
from bench.train_refrag import DECODER, DOC_START, EMBEDDER, GUTENBERG, HELD_OUT, novel_body
from longrag.generation import refrag as rf
from longrag.generation.decoding import generate, pick, prefill

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "datasets" / "squad_v1.1" / "dev-v1.1.part1of2.json"
OUT = REPO / "bench" / "results" / "refrag.json"


def projector_for(k: int, rt: rf.Refrag) -> tuple[rf.Projector, bool]:
    """The projector under test for its k, a bundled one for another k, else a random one (timing only)."""
    if k == rt.k:
        return rt.projector.eval(), True
    path = rf.find_checkpoint(DECODER, k)
    if path is not None:
        proj, _, _ = rf.load_checkpoint(path, decoder=DECODER, embedder=EMBEDDER, k=k)
        return proj.eval(), True
    torch.manual_seed(k)
    return rf.new_projector(rf.RefragConfig(DECODER, EMBEDDER, k, dec_dim=rt.config.dec_dim,
                                            hidden_dim=rt.config.hidden_dim)).eval(), False


def ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


@torch.inference_mode()
def ttft_full(model, ids: list[int]) -> float:
    t0 = time.perf_counter()
    logits = prefill(model, torch.tensor([ids]), DynamicCache())
    pick(logits)
    return ms(t0)


@torch.inference_mode()
def ttft_refrag(model, enc: rf.ChunkEncoder, proj, prefix, ctx_ids, suffix, k: int,
                emb: np.ndarray | None) -> tuple[float, int, np.ndarray]:
    """TTFT with cached embeddings (``emb`` given) or computing them (``emb`` None)."""
    t0 = time.perf_counter()
    chunks = rf.chunk_ids(ctx_ids, k)
    if emb is None:
        emb = enc.encode(chunks)
    x, layout = rf.build_inputs_embeds(model, proj, chunks, emb, prefix_ids=prefix, suffix_ids=suffix)
    logits = rf.prefill_embeds(model, x, DynamicCache())
    pick(logits)
    return ms(t0), layout.input_length, emb


def bench_ttft(rt: rf.Refrag, ids: list[int], prefix, suffix, sizes, ks, projs) -> dict:
    model, enc = rt.model, rt.encoder
    rows = []
    # warm-up (first-call overheads) on a small input
    ttft_full(model, prefix + ids[:256] + suffix)
    ttft_refrag(model, enc, projs[ks[0]][0], prefix, ids[:256], suffix, ks[0], None)
    for s in sizes:
        ctx = ids[:s]
        row = {"context_tokens": s, "full_ms": ttft_full(model, prefix + ctx + suffix),
               "full_input_length": len(prefix) + s + len(suffix)}
        for k in ks:
            proj = projs[k][0]
            uncached, _, emb = ttft_refrag(model, enc, proj, prefix, ctx, suffix, k, None)
            cached, length, _ = ttft_refrag(model, enc, proj, prefix, ctx, suffix, k, emb)  # emb as stored at ingestion
            row[f"refrag{k}"] = {"cached_ms": cached, "uncached_ms": uncached, "input_length": length,
                                 "speedup_cached": round(row["full_ms"] / cached, 2),
                                 "speedup_uncached": round(row["full_ms"] / uncached, 2)}
        rows.append(row)
        print("ttft", json.dumps(row), flush=True)
    return {"rows": rows, "reps": 1, "note": "one timed run per cell after a warm-up; prompt = QA chat template around the context"}


@torch.inference_mode()
def nll_ids(model, ids: list[int], target: list[int]) -> float:
    x = torch.tensor([ids + target[:-1]])
    logits = model(input_ids=x, logits_to_keep=len(target)).logits[0].float()
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(target)))


def bench_ppl(rt: rf.Refrag, ids: list[int], s: int, target: int, samples: int, projs: dict, seed: int) -> dict:
    model, enc = rt.model, rt.encoder
    rng = random.Random(seed)
    trained = [k for k, (_, ok) in projs.items() if ok]
    sums: dict[str, float] = Counter()
    for _ in range(samples):
        start = rng.randrange(0, len(ids) - s - target)
        ctx, nxt = ids[start : start + s], ids[start + s : start + s + target]
        sums["full_context"] += nll_ids(model, ctx, nxt)
        sums["no_context"] += nll_ids(model, [DOC_START], nxt)
        for k in trained:
            chunks = rf.chunk_ids(ctx, k)
            with torch.inference_mode():
                x, _ = rf.build_inputs_embeds(model, projs[k][0], chunks, enc.encode(chunks))
                sums[f"refrag{k}"] += rf.continuation_log_ppl(model, x, nxt)
            sums[f"truncated_last_{s // k}"] += nll_ids(model, ctx[-(s // k):], nxt)
    res = {key: round(v / samples, 4) for key, v in sums.items()}
    print("ppl", json.dumps(res), flush=True)
    return {"context_tokens": s, "target_tokens": target, "samples": samples, "mean_nll": res,
            "trained_k": trained, "acceptance": {f"refrag{k}_beats_truncated": res[f"refrag{k}"] < res[f"truncated_last_{s // k}"] for k in trained}}


# -- SQuAD F1 ------------------------------------------------------------------------------------
def _normalize(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def f1(pred: str, golds: list[str]) -> float:
    best = 0.0
    p = _normalize(pred)
    for g in golds:
        gt = _normalize(g)
        common = sum((Counter(p) & Counter(gt)).values())
        if common:
            prec, rec = common / len(p), common / len(gt)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def squad_items(n: int, distractors: int, seed: int) -> list[dict]:
    data = json.loads(SQUAD.read_text())["data"]
    rng = random.Random(seed)
    items = []
    articles = [a for a in data if len(a["paragraphs"]) > distractors]
    while len(items) < n:
        art = rng.choice(articles)
        gi = rng.randrange(len(art["paragraphs"]))
        gold = art["paragraphs"][gi]
        qa = rng.choice(gold["qas"])
        others = rng.sample([p["context"] for j, p in enumerate(art["paragraphs"]) if j != gi], distractors)
        paras = others + [gold["context"]]
        rng.shuffle(paras)
        items.append({"question": qa["question"], "answers": [a["text"] for a in qa["answers"]], "paragraphs": paras})
    return items


def bench_squad(rt: rf.Refrag, n: int, distractors: int, k: int, p: float, seed: int, max_new: int) -> dict:
    from longrag.generation.prompts import answer_messages, context_block, encode_chat
    from longrag.services.modes.refrag import split_chat

    model, tok, enc = rt.model, rt.tokenizer, rt.encoder
    proj = projector_for(k, rt)[0]
    scores: dict[str, list[float]] = {"full": [], "refrag": [], "truncated": []}
    lengths: dict[str, list[int]] = {"full": [], "refrag": [], "truncated": []}
    examples = []
    for it in squad_items(n, distractors, seed):
        ctx = context_block(it["paragraphs"])
        full_ids = encode_chat(tok, answer_messages(it["question"], ctx))
        g_full = generate(model, tok, full_ids, max_new_tokens=max_new)
        prefix, suffix = split_chat(tok, it["question"])
        ctx_ids = rf.tokenize(tok, ctx).ids
        chunks = rf.chunk_ids(ctx_ids, k)
        emb = enc.encode(chunks)
        expand = rf.expand_by_query(emb, enc.encode_query(it["question"]), p)
        with torch.inference_mode():
            x, layout = rf.build_inputs_embeds(model, proj, chunks, emb, expand=expand, prefix_ids=prefix, suffix_ids=suffix)
        g_ref = rf.generate_from_embeds(model, tok, x, max_new_tokens=max_new)
        budget = layout.input_length - len(prefix) - len(suffix)
        trunc_ids = prefix + ctx_ids[-budget:] + suffix
        g_tr = generate(model, tok, trunc_ids, max_new_tokens=max_new)
        for key, g, length in (("full", g_full, len(full_ids)), ("refrag", g_ref, layout.input_length),
                               ("truncated", g_tr, len(trunc_ids))):
            scores[key].append(f1(g.text, it["answers"]))
            lengths[key].append(length)
        examples.append({"q": it["question"], "gold": it["answers"][0], "full": g_full.text, "refrag": g_ref.text,
                         "truncated": g_tr.text})
        print("squad", json.dumps(examples[-1]), flush=True)
    return {"questions": n, "paragraphs_per_question": distractors + 1, "k": k, "p": p, "policy": "query",
            "f1": {key: round(float(np.mean(v)), 4) for key, v in scores.items()},
            "mean_decoder_input_length": {key: round(float(np.mean(v)), 1) for key, v in lengths.items()},
            "examples": examples[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--ppl-context", type=int, default=2048)
    ap.add_argument("--ppl-target", type=int, default=256)
    ap.add_argument("--ppl-samples", type=int, default=4)
    ap.add_argument("--squad", type=int, default=12, help="SQuAD questions")
    ap.add_argument("--distractors", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.25, help="expansion fraction for the SQuAD run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", nargs="+", default=["ttft", "ppl", "squad"])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--checkpoint", type=Path, default=None, help="k=16 projector to evaluate (default: the bundled one)")
    ap.add_argument("--merge", action="store_true", help="add these sections to an existing JSON (ttft rows by size)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or rf.find_checkpoint(DECODER, 16)
    if ckpt is None:
        raise SystemExit("train the k=16 projector first: python -m bench.train_refrag")
    rt = rf.load_refrag(ckpt, device="cpu")
    projs = {k: projector_for(k, rt) for k in sorted(set(args.ks) | {16})}
    ids = rf.tokenize(rt.tokenizer, novel_body(GUTENBERG / HELD_OUT)).ids
    from longrag.services.modes.refrag import split_chat

    prefix, suffix = split_chat(rt.tokenizer, "Who is the narrator of the story?")
    result: dict = {
        "command": "LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.refrag " + " ".join(
            f"--{a.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for a, v in vars(args).items() if a != "out"),
        "hardware": f"{platform.machine()} CPU, torch threads={args.threads}, fp32",
        "machine": hardware(),
        "decoder": DECODER, "embedder": EMBEDDER, "checkpoint": ckpt.name,
        "projectors": {str(k): "trained" if ok else "random (timing only)" for k, (_, ok) in projs.items()},
        "held_out_novel": HELD_OUT, "held_out_tokens": len(ids),
    }

    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}

    def save() -> None:
        if previous:
            merged = {**previous, **result}
            if "ttft" in previous and "ttft" in result:
                rows = {r["context_tokens"]: r for r in previous["ttft"]["rows"] + result["ttft"]["rows"]}
                merged["ttft"] = {**result["ttft"], "rows": [rows[s_] for s_ in sorted(rows)]}
            merged["command"] = previous.get("command", "") + " ; " + result["command"]
            merged["seconds"] = previous.get("seconds", 0) + result.get("seconds", 0)
            args.out.write_text(json.dumps(merged, indent=1))
            return
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    t0 = time.perf_counter()
    if "ttft" in args.sections:
        result["ttft"] = bench_ttft(rt, ids, prefix, suffix, args.sizes, args.ks, projs)
        save()
    if "ppl" in args.sections:
        result["log_ppl"] = bench_ppl(rt, ids, args.ppl_context, args.ppl_target, args.ppl_samples, projs, args.seed)
        save()
    if "squad" in args.sections:
        result["squad_f1"] = bench_squad(rt, args.squad, args.distractors, 16, args.p, args.seed, 16)
        save()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    print("wrote", args.out)


if __name__ == "__main__":
    main()
