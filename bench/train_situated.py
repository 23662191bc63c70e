"""Train the situated adapter (``strategy="trained"``) on SQuAD v1.1 dev part 1 only.

Data: SQuAD dev part 1 (24 articles; never used for evaluation, which uses part 2 and
HotpotQA). Each question's positive is the sentence holding its answer start; the softmax runs
over every sentence of the part-1 corpus (in-article hard negatives included), as in SitEmb's
InfoNCE. The question encoder and the chunk-only encoder stay frozen (all-MiniLM-L6-v2); only
the adapter ``s = normalize(c + sum_f W_f x_f)`` is learnt, with ``W_f = a_f * I + U_f V_f^T``
(a scalar plus a low-rank term), and the score is ``(sim(q,s) + beta sim(q,c)) / (1+beta)``.
Four articles of part 1 are held out for early stopping.

Run: ``.venv/bin/python -m bench.train_situated`` (a few minutes on 2 CPU cores); writes
``longrag/retrieval/weights/situated_adapter.npz`` and ``bench/results/situated_train.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.situated import squad_docs, unit_at
from longrag.retrieval.embed import Embedder
from longrag.retrieval.situated import DEFAULT_WEIGHTS, Adapter, SituatedConfig, SituatedEmbedder

REPO = Path(__file__).resolve().parents[1]
LOG = REPO / "bench" / "results" / "situated_train.json"


def main(argv: list[str] | None = None) -> None:
    import torch

    from longrag.models.registry import load_embedder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default="pool,lead")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--lead", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--log", type=Path, default=LOG)
    ap.add_argument("--cache", type=Path, default=None, help="keep the part-1 encodings here between runs")
    ap.add_argument("--articles", type=int, default=0, help="use only the first N part-1 articles (smoke runs)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(2)
    features = args.features.split(",")
    t_start = time.perf_counter()

    embedder = Embedder(load_embedder("all-minilm-l6-v2"))
    cfg = replace(SituatedConfig(), strategy="residual", window=args.window, lead=args.lead, beta=args.beta)
    sit = SituatedEmbedder(embedder, cfg)
    docs, qs = squad_docs(1)
    if args.articles:  # a smoke run on the first few articles
        docs = docs[: args.articles]
        qs = [q for q in qs if q[1] < args.articles]
    starts = np.cumsum([0, *(len(d.units) for d in docs)])
    cached = args.cache / "squad_part1_train.npz" if args.cache else None
    if cached and cached.exists():
        z = np.load(cached)
        C, qv = z["C"], z["qv"]
    else:
        C = np.concatenate(sit.chunk_vectors(docs))
        qv = embedder.encode([q for q, _, _ in qs])
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, C=C, qv=qv)
    chunks = [C[starts[i] : starts[i + 1]] for i in range(len(docs))]
    feats = {f: np.concatenate(sit.feature(f, docs, chunks)) for f in features}
    gold = np.array([starts[d] + unit_at(docs[d], c) for _, d, c in qs])
    art = np.array([d for _, d, _ in qs])
    held = set(random.sample(range(len(docs)), min(4, max(1, len(docs) // 6))))
    train = np.array([i for i in range(len(qs)) if art[i] not in held])
    val = np.array([i for i in range(len(qs)) if art[i] in held])
    print(f"part 1: {len(docs)} articles, {len(C)} sentences, {len(train)} train / {len(val)} val questions "
          f"({time.perf_counter() - t_start:.0f}s to featurise)", flush=True)

    dim = C.shape[1]
    Ct = torch.from_numpy(C)
    Ft = {f: torch.from_numpy(v) for f, v in feats.items()}
    Q = torch.from_numpy(qv)
    G = torch.from_numpy(gold)
    scale = {f: torch.nn.Parameter(torch.tensor(cfg.alpha if f == "pool" else 0.0)) for f in features}
    U = {f: torch.nn.Parameter(torch.randn(dim, args.rank) * 0.01) for f in features}
    V = {f: torch.nn.Parameter(torch.randn(dim, args.rank) * 0.01) for f in features}
    params = [*scale.values(), *U.values(), *V.values()]
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=0.0)

    def situated() -> torch.Tensor:
        out = Ct.clone()
        for f in features:
            x = Ft[f]
            out = out + scale[f] * x + (x @ V[f]) @ U[f].T
        s = torch.nn.functional.normalize(out, dim=-1)
        return (s + args.beta * Ct) / (1 + args.beta)

    def evaluate(idx: np.ndarray) -> dict[str, float]:
        with torch.no_grad():
            S = situated()
            scores = Q[idx] @ S.T
            g = G[idx]
            rank = (scores > scores.gather(1, g[:, None])).sum(1)
            return {"R@1": float((rank < 1).float().mean()), "R@10": float((rank < 10).float().mean()),
                    "MRR@10": float(torch.where(rank < 10, 1.0 / (rank + 1).float(), 0.0).mean())}

    history = [{"epoch": 0, "val": evaluate(val), "train": evaluate(train)}]
    print(history[-1], flush=True)
    best = (history[-1]["val"]["MRR@10"], 0, [p.detach().clone() for p in params])
    for epoch in range(1, args.epochs + 1):
        perm = train[np.random.default_rng(args.seed + epoch).permutation(len(train))]
        total = 0.0
        for b in range(0, len(perm), args.batch):
            idx = torch.from_numpy(perm[b : b + args.batch])
            S = situated()
            logits = (Q[idx] @ S.T) / args.temperature
            loss = torch.nn.functional.cross_entropy(logits, G[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        rec = {"epoch": epoch, "loss": round(total / len(train), 4), "val": evaluate(val)}
        history.append(rec)
        print(rec, flush=True)
        if rec["val"]["MRR@10"] > best[0]:
            best = (rec["val"]["MRR@10"], epoch, [p.detach().clone() for p in params])
    for p, v in zip(params, best[2]):
        p.data.copy_(v)
    eye = torch.eye(dim)
    mats = {f: (scale[f].detach() * eye + U[f].detach() @ V[f].detach().T).numpy() for f in features}
    adapter = Adapter(features, mats, {
        "window": args.window, "lead": args.lead, "beta": args.beta, "embedder": "all-minilm-l6-v2",
        "trained_on": "SQuAD v1.1 dev part 1", "best_epoch": best[1],
    })
    adapter.save(args.out)
    log = {
        "command": "python -m bench.train_situated " + " ".join(argv or __import__("sys").argv[1:]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "data": {"articles": len(docs), "sentences": int(len(C)), "train_questions": int(len(train)),
                 "val_questions": int(len(val)), "held_out_articles": sorted(docs[i].title or "" for i in held)},
        "best_epoch": best[1], "history": history,
        "train_final": evaluate(train), "weights": str(args.out),
        "weights_bytes": args.out.stat().st_size, "seconds": round(time.perf_counter() - t_start, 1),
        "hardware": "2 shared CPU cores, torch threads 2",
    }
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text(json.dumps(log, indent=2))
    print(f"best epoch {best[1]} val {history[best[1]]['val']}; wrote {args.out} ({log['weights_bytes']} bytes)")


if __name__ == "__main__":
    main()
