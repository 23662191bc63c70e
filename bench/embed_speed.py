"""Embedding speed of the ingestion path: plain ``SentenceTransformer.encode`` vs the ONNX backends.

Same SQuAD v1.1 dev sentences (blingfire-split contexts, a fixed random sample) for every
backend, measured side by side in one process, rounds interleaved so that the load of the
shared machine hits every backend alike. Quality: cosine of each backend's vectors to the
plain fp32 vectors. Writes ``bench/results/embed_speed.json``.

    python -m bench.embed_speed [--n 600] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from bench.common import hardware, set_threads, write_result
from bench.data import load_squad


def squad_sentences(n: int, seed: int = 0) -> list[str]:
    from longrag.retrieval.segment import split_sentences

    articles, _ = load_squad()
    sents = [a.text[s.start : s.end] for a in articles for s in split_sentences(a.text)]
    return random.Random(seed).sample(sents, min(n, len(sents)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="sentences")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (2 = the cores here)")
    args = ap.parse_args()
    set_threads(args.threads)
    from longrag.config import get_settings
    from longrag.models.registry import load_embedder
    from longrag.retrieval.embed import OnnxSentenceEncoder

    sentences = squad_sentences(args.n)
    plain = load_embedder(backend="torch", device="cpu")
    onnx = load_embedder(backend="onnx", device="cpu")
    int8 = load_embedder(backend="onnx-int8", device="cpu")
    for m in (onnx, int8):
        assert isinstance(m, OnnxSentenceEncoder)
        m.session  # noqa: B018 - loaded
    # threads of onnxruntime follow the same budget
    onnx = OnnxSentenceEncoder(plain, onnx.onnx_path, threads=args.threads)
    int8 = OnnxSentenceEncoder(plain, int8.onnx_path, threads=args.threads)

    variants = {
        "torch_plain_encode_default": lambda xs: plain.encode(xs),  # the baseline: defaults (batch 32)
        "torch_encode_batch8": lambda xs: plain.encode(xs, batch_size=8),
        "onnx_fp32_fused_batch8 (longrag default)": lambda xs: onnx.encode(xs),
        "onnx_fp32_fused_batch4": lambda xs: onnx.encode(xs, batch_size=4),
        "onnx_fp32_fused_batch32": lambda xs: onnx.encode(xs, batch_size=32),
        "onnx_int8_batch8": lambda xs: int8.encode(xs),
    }
    for fn in variants.values():  # warm-up
        fn(sentences[:64])
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    vecs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(sentences)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            vecs[name] = np.asarray(out, dtype=np.float32)
            print(f"round {r} {name}: {len(sentences) / times[name][-1]:.1f} sentences/s", flush=True)
    ref = vecs["torch_plain_encode_default"]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    base = statistics.median(times["torch_plain_encode_default"])
    results = {}
    for name in variants:
        v = vecs[name] / np.linalg.norm(vecs[name], axis=1, keepdims=True)
        cos = (v * ref).sum(axis=1)
        med = statistics.median(times[name])
        results[name] = {
            "sentences_per_s_median": round(len(sentences) / med, 1),
            "sentences_per_s_best": round(len(sentences) / min(times[name]), 1),
            "speedup_vs_plain_median": round(base / med, 2),
            "seconds_per_round": [round(t, 2) for t in times[name]],
            "cpu_seconds_per_round": [round(t, 2) for t in cpu[name]],
            "sentences_per_cpu_s": round(len(sentences) / statistics.median(cpu[name]), 1),
            "cosine_to_plain_fp32": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)},
        }
    tokens = plain.tokenizer(sentences, add_special_tokens=False)["input_ids"]
    payload = {
        "what": "ingestion embedding path: sentences/s of all-MiniLM-L6-v2 on CPU, backends side by side in one run",
        "data": {"sentences": len(sentences), "source": "SQuAD v1.1 dev contexts split by blingfire, random.Random(0).sample",
                 "mean_wordpieces": round(float(np.mean([len(t) for t in tokens])), 1)},
        "threads": args.threads,
        "rounds": args.rounds,
        "default_backend": get_settings().embed_backend,
        "hardware": hardware(),
        "results": results,
        "target": "fast path >= 1.5x torch_plain_encode_default",
    }
    write_result("embed_speed", payload)
    for k, v in results.items():
        print(f"{k:32s} {v['sentences_per_s_median']:8.1f}/s  x{v['speedup_vs_plain_median']:.2f}  cos {v['cosine_to_plain_fp32']}")


if __name__ == "__main__":
    main()
