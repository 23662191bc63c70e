"""Train the REFRAG projector phi (MiniLM 384 -> SmolLM2 576) on Gutenberg novels.

Stages (decoder and encoder frozen throughout; only phi is trained):
  1. reconstruction: input [e_1..e_L ; x_1..x_{Lk-1}], loss on x_1..x_{Lk}, curriculum over
     L = 1, 2, 4, ... chunks (the paper: without the curriculum it fails).
  2. continual pre-training, next-paragraph prediction: [e_1..e_L of s context tokens ; next
     T raw tokens], loss on the next T tokens (the paper also unfreezes the decoder here; we
     keep it frozen: no decoder adapter to ship).

With --bag-views n, phi also reads n learned position-weighted pools of each chunk's own decoder
token embeddings (see longrag.generation.refrag.TokenBag): still one decoder slot per chunk.

One novel (The Great Gatsby) is held out for evaluation. Chunk embeddings (MiniLM over k-token
chunks of the decoder's tokenization) are computed once and cached under .cache/refrag/.

CPU, small scale (shared 2-core machine, one thread), the first committed weights:
    LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.train_refrag --k 16 --threads 1
CPU, idle machine, ~40 minutes (the exact command of the committed weights is in their log):
    LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.train_refrag --k 16 --scale cpu-long --threads 2
CUDA, full scale:
    .venv/bin/python -m bench.train_refrag --k 16 --scale full --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import hardware
from longrag.generation.refrag import ChunkEncoder, RefragConfig, new_projector, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
GUTENBERG = REPO.parent / "shared" / "datasets" / "gutenberg"
HELD_OUT = "pg64317_the_great_gatsby.txt"
DECODER = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
DOC_START = 0  # SmolLM2's <|endoftext|>, the document separator: the "no context" condition starts there


def novel_body(path: Path) -> str:
    """The text between the Gutenberg START/END markers (whole file when absent)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    start = text.find("*** START OF")
    if start >= 0:
        text = text[text.find("\n", start) + 1 :]
    end = text.find("*** END OF")
    if end >= 0:
        text = text[:end]
    return text.strip()


@dataclass
class Scale:
    span_tokens: int  # tokens taken from each novel (from 10% in); 0: whole novel
    s1_positions: int  # decoder positions per stage-1 step (batch = positions // seq len)
    s1_minutes: float
    s1_max_steps: int
    s1_max_chunks: int
    s2_positions: int
    s2_minutes: float
    s2_max_steps: int
    s2_chunks: tuple[int, ...]
    s2_target: int
    eval_samples: int
    lr: float


SCALES = {
    "cpu": Scale(4096, 136, 11.0, 400, 8, 160, 7.0, 400, (16, 32, 64), 32, 4, 1e-3),
    # an idle 2-core CPU for ~40 minutes: 8x the text, most of the time in stage 2
    "cpu-long": Scale(32768, 136, 10.0, 100000, 8, 320, 28.0, 100000, (16, 32, 64), 64, 8, 1e-3),
    "full": Scale(0, 8192, 60.0, 6000, 64, 8192, 30.0, 4000, (32, 64, 128, 256), 256, 64, 3e-4),
}


def token_spans(tokenizer, files: list[Path], span: int) -> list[list[int]]:
    out = []
    for f in files:
        ids = tokenizer(novel_body(f), add_special_tokens=False)["input_ids"]
        if span:
            start = len(ids) // 10
            ids = ids[start : start + span]
        out.append(list(ids))
    return out


def chunk_embeddings(encoder: ChunkEncoder, spans: list[list[int]], k: int, cache: Path) -> list[np.ndarray]:
    """Per span, an (n_chunks, 384) array over its full k-token chunks (cached on disk)."""
    if cache.exists():
        z = np.load(cache)
        return [z[f"s{i}"] for i in range(len(spans))]
    out = []
    for ids in spans:
        n = len(ids) // k
        out.append(encoder.encode([ids[i * k : (i + 1) * k] for i in range(n)]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"s{i}": e for i, e in enumerate(out)})
    return out


class Batcher:
    """Random chunk-aligned windows from the spans."""

    def __init__(self, spans: list[list[int]], embs: list[np.ndarray], k: int, rng: random.Random) -> None:
        self.spans, self.embs, self.k, self.rng = spans, embs, k, rng

    def window(self, n_chunks: int, extra: int) -> tuple[np.ndarray, list[int], list[int]]:
        """(chunk embeddings, the chunks' tokens, the ``extra`` tokens that follow)."""
        k = self.k
        while True:
            i = self.rng.randrange(len(self.spans))
            avail = len(self.embs[i]) - n_chunks - math.ceil(extra / k)
            if avail > 0:
                break
        c = self.rng.randrange(avail)
        ids = self.spans[i]
        return self.embs[i][c : c + n_chunks], ids[c * k : (c + n_chunks) * k], ids[(c + n_chunks) * k : (c + n_chunks) * k + extra]


def forward_loss(model, projector, emb: np.ndarray, chunk_tokens: torch.Tensor, prefix_tokens: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """Loss of ``targets`` after ``[phi(emb, chunks) ; embed(prefix_tokens)]``.

    emb (B,L,d), chunk_tokens (B,L,k) (read only by a projector with a token bag), tokens (B,T-1)/(B,T).
    """
    wte = model.get_input_embeddings()
    dev = wte.weight.device
    tok = wte(chunk_tokens.to(dev)) if projector.bag is not None else None
    ce = projector(torch.as_tensor(emb, dtype=torch.float32, device=dev), tok)
    x = torch.cat([ce, wte(prefix_tokens.to(dev))], dim=1)
    n = targets.shape[1]
    logits = model(inputs_embeds=x, logits_to_keep=n).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.to(dev).reshape(-1))


def recon_batch(b: Batcher, n_chunks: int, batch: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    embs, toks = [], []
    for _ in range(batch):
        e, ids, _ = b.window(n_chunks, 0)
        embs.append(e)
        toks.append(ids)
    t = torch.tensor(toks)
    return np.stack(embs), t.view(batch, n_chunks, b.k), t[:, :-1], t


def cpt_batch(b: Batcher, n_chunks: int, target: int, batch: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    embs, ctxs, toks = [], [], []
    for _ in range(batch):
        e, ctx, nxt = b.window(n_chunks, target)
        embs.append(e)
        ctxs.append(ctx)
        toks.append(nxt)
    t = torch.tensor(toks)
    return np.stack(embs), torch.tensor(ctxs).view(batch, n_chunks, b.k), t[:, :-1], t


@torch.no_grad()
def evaluate(model, projector, b: Batcher, *, n_chunks: int, target: int, samples: int, k: int) -> dict[str, float]:
    """Held-out NLL of the next ``target`` tokens: REFRAG vs last n_chunks raw tokens vs none vs full."""
    rng_state = b.rng.getstate()
    b.rng.seed(1234)
    wte = model.get_input_embeddings()
    res = {"refrag": 0.0, "truncated_s_over_k": 0.0, "no_context": 0.0, "full_context": 0.0, "recon_1chunk": 0.0}
    for _ in range(samples):
        e, ctx, nxt = b.window(n_chunks, target)
        t = torch.tensor([nxt])
        res["refrag"] += float(forward_loss(model, projector, e[None], torch.tensor(ctx).view(1, n_chunks, k), t[:, :-1], t))
        for key, raw in (("truncated_s_over_k", ctx[-n_chunks:]), ("full_context", ctx), ("no_context", [DOC_START])):
            ids = torch.tensor([raw + nxt[:-1]], device=wte.weight.device)
            logits = model(inputs_embeds=wte(ids), logits_to_keep=target).logits[0].float()
            res[key] += float(torch.nn.functional.cross_entropy(logits, t[0].to(logits.device)))
        e1, ids1, _ = b.window(1, 0)
        t1 = torch.tensor([ids1])
        res["recon_1chunk"] += float(forward_loss(model, projector, e1[None], t1.view(1, 1, k), t1[:, :-1], t1))
    b.rng.setstate(rng_state)
    return {key: round(v / samples, 4) for key, v in res.items()} | {"n_chunks": n_chunks, "context_tokens": n_chunks * k,
                                                                       "target_tokens": target, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--log", type=Path, default=REPO / "bench" / "results" / "refrag_train_log.json")
    ap.add_argument("--s1-minutes", type=float, default=None)
    ap.add_argument("--s2-minutes", type=float, default=None)
    ap.add_argument("--bag-views", type=int, default=0,
                    help="also feed phi n learned pools of the chunk's decoder token embeddings (0: MiniLM vector only)")
    args = ap.parse_args()
    sc = SCALES[args.scale]
    if args.s1_minutes is not None:
        sc.s1_minutes = args.s1_minutes
    if args.s2_minutes is not None:
        sc.s2_minutes = args.s2_minutes
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    k = args.k
    out = args.out or REPO / "longrag" / "generation" / "weights" / f"refrag-smollm2-k{k}.pt"
    from longrag.models.registry import load_decoder, load_embedder

    t_start = time.perf_counter()
    dec = load_decoder(DECODER, device=args.device)
    model = dec.model
    if args.device == "cuda":
        model = model.float()
    for p in model.parameters():
        p.requires_grad_(False)
    encoder = ChunkEncoder(load_embedder(EMBEDDER, device=args.device), dec.tokenizer)
    files = sorted(p for p in GUTENBERG.glob("pg*.txt"))
    train_files = [f for f in files if f.name != HELD_OUT]
    spans = token_spans(dec.tokenizer, train_files, sc.span_tokens)
    held = token_spans(dec.tokenizer, [GUTENBERG / HELD_OUT], sc.span_tokens or 0)
    cache = REPO / ".cache" / "refrag" / f"train-{args.scale}-k{k}-span{sc.span_tokens}.npz"
    t0 = time.perf_counter()
    embs = chunk_embeddings(encoder, spans, k, cache)
    held_embs = chunk_embeddings(encoder, held, k, cache.with_name(cache.stem + "-heldout.npz"))
    embed_s = time.perf_counter() - t0
    print(f"chunk embeddings: {sum(len(e) for e in embs)} train + {len(held_embs[0])} held-out in {embed_s:.0f}s", flush=True)
    train_b, held_b = Batcher(spans, embs, k, rng), Batcher(held, held_embs, k, random.Random(args.seed + 1))

    hidden = model.get_input_embeddings().weight.shape[1]
    config = RefragConfig(decoder=DECODER, embedder=EMBEDDER, k=k, enc_dim=encoder.dim, dec_dim=hidden, hidden_dim=hidden,
                          bag_views=args.bag_views)
    projector = new_projector(config).to(args.device)
    eval_kw = dict(n_chunks=sc.s2_chunks[1] if len(sc.s2_chunks) > 1 else sc.s2_chunks[0], target=sc.s2_target,
                   samples=sc.eval_samples, k=k)
    log: dict = {
        "command": "LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.train_refrag " + " ".join(sys.argv[1:]),
        "hardware": f"{platform.processor() or platform.machine()}, device={args.device}, torch threads={args.threads}",
        "machine": hardware(),
        "decoder": DECODER, "embedder": EMBEDDER, "k": k, "scale": args.scale,
        "train_novels": [f.name for f in train_files], "held_out": HELD_OUT,
        "train_tokens_available": sum(len(s) for s in spans), "chunk_embedding_seconds": round(embed_s, 1),
        "frozen": ["decoder", "encoder"], "trained": "projector phi (2-layer MLP, %d params)" % sum(p.numel() for p in projector.parameters()),
    }
    log["eval_init"] = evaluate(model, projector, held_b, **eval_kw)
    print("eval (random phi)", log["eval_init"], flush=True)

    opt = torch.optim.Adam(projector.parameters(), lr=sc.lr)
    # stage 1: reconstruction with a curriculum 1, 2, 4, ... chunks (equal time per phase)
    phases = [2**i for i in range(int(math.log2(sc.s1_max_chunks)) + 1)]
    s1 = []
    tokens = 0
    t0 = time.perf_counter()
    for pi, n_chunks in enumerate(phases):
        phase_end = t0 + sc.s1_minutes * 60 * (pi + 1) / len(phases)
        steps = 0
        while time.perf_counter() < phase_end and steps < sc.s1_max_steps // len(phases):
            batch = max(1, sc.s1_positions // (n_chunks * (k + 1)))
            e, ctx, inp, tgt = recon_batch(train_b, n_chunks, batch)
            loss = forward_loss(model, projector, e, ctx, inp.to(args.device), tgt.to(args.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            tokens += tgt.numel()
            s1.append({"chunks": n_chunks, "batch": batch, "loss": round(float(loss), 4),
                       "t": round(time.perf_counter() - t0, 1)})
            print("stage1", s1[-1], flush=True)
    log["stage1_reconstruction"] = {"curriculum_chunks": phases, "steps": len(s1), "target_tokens": tokens,
                                    "seconds": round(time.perf_counter() - t0, 1), "log": s1}
    log["eval_after_stage1"] = evaluate(model, projector, held_b, **eval_kw)
    print("eval (stage 1)", log["eval_after_stage1"], flush=True)

    # stage 2: next-paragraph prediction from compressed context
    s2 = []
    tokens = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < sc.s2_minutes * 60 and len(s2) < sc.s2_max_steps:
        n_chunks = rng.choice(sc.s2_chunks)
        batch = max(1, sc.s2_positions // (n_chunks + sc.s2_target))
        e, ctx, inp, tgt = cpt_batch(train_b, n_chunks, sc.s2_target, batch)
        loss = forward_loss(model, projector, e, ctx, inp.to(args.device), tgt.to(args.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += tgt.numel()
        s2.append({"chunks": n_chunks, "batch": batch, "loss": round(float(loss), 4), "t": round(time.perf_counter() - t0, 1)})
        print("stage2", s2[-1], flush=True)
    log["stage2_next_paragraph"] = {"steps": len(s2), "target_tokens": tokens, "seconds": round(time.perf_counter() - t0, 1),
                                    "context_chunks": list(sc.s2_chunks), "target_len": sc.s2_target, "log": s2}
    log["eval_final"] = evaluate(model, projector, held_b, **eval_kw)
    print("eval (final)", log["eval_final"], flush=True)
    log["total_seconds"] = round(time.perf_counter() - t_start, 1)
    save_checkpoint(out, projector.cpu(), config, meta={k_: log[k_] for k_ in ("command", "hardware", "scale", "held_out", "eval_final")})
    log["weights"] = str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text(json.dumps(log, indent=1))
    print("wrote", out, args.log)


if __name__ == "__main__":
    main()
