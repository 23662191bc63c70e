"""LoRA fine-tune of a registry decoder for CFIC evidence extraction (the paper's SFT step).

Data: SQuAD v1.1 dev part 1 (never used for evaluation; the benchmark reads part 2).
Each example: document = the question's paragraph (or a window of neighbouring paragraphs of
the article), target = the answer-bearing sentence verbatim, then the end-of-turn token. A
share of negatives (the question with a paragraph of another article) teaches "no evidence"
(target = the end-of-turn token only). The prompt is :func:`longrag.retrieval.cfic.prompt_text`,
the same one the extractor prefills. Loss on the target tokens only.

The adapter folder (with ``training_log.jsonl``, whose first line is the command) is read by
``python -m bench.cfic --adapter DIR`` or by the server's ``LONGRAG_CFIC_ADAPTER=DIR``.

CPU, small scale::

    LONGRAG_MODEL_CACHE=.cache/models .venv/bin/python -m bench.train_cfic \
        --model smollm2-135m-instruct --minutes 15 --threads 1 \
        --out .cache/cfic-smollm2-lora

CUDA, full scale (same script)::

    python -m bench.train_cfic --model qwen2.5-coder-0.5b-instruct --device cuda \
        --examples 20000 --minutes 0 --window 3 --rank 16 --out .cache/cfic-qwen-lora
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "squad_v1.1" / "dev-v1.1.part1of2.json"


def build_examples(path: Path, *, window: int, negatives: float, seed: int, max_chars: int) -> list[dict]:
    """(document, question, evidence) triples from SQuAD: evidence = the answer's sentence."""
    from longrag.retrieval.segment import split_sentences

    rng = random.Random(seed)
    data = json.loads(path.read_text())["data"]
    out: list[dict] = []
    for a_i, article in enumerate(data):
        paras = [p["context"] for p in article["paragraphs"]]
        for p_i, para in enumerate(article["paragraphs"]):
            lo = max(0, p_i - rng.randint(0, window - 1)) if window > 1 else p_i
            docs = paras[lo : lo + window] if window > 1 else [paras[p_i]]
            doc = "\n\n".join(docs)
            if len(doc) > max_chars:
                doc = para["context"]
            offset = doc.find(para["context"])
            sents = split_sentences(doc)
            for qa in para["qas"]:
                ans = qa["answers"][0]
                a0 = offset + ans["answer_start"]
                hit = [s for s in sents if s.start <= a0 < s.end]
                if not hit:
                    continue
                s = hit[0]
                end = max(s.end, next((x.end for x in sents if x.start <= a0 + len(ans["text"]) - 1 < x.end), s.end))
                out.append({"document": doc, "question": qa["question"], "evidence": doc[s.start:end]})
                if rng.random() < negatives:
                    other = data[(a_i + rng.randint(1, len(data) - 1)) % len(data)]
                    neg = rng.choice(other["paragraphs"])["context"]
                    out.append({"document": neg, "question": qa["question"], "evidence": ""})
    rng.shuffle(out)
    return out


def encode(tokenizer, ex: dict, stop_id: int, max_tokens: int) -> tuple[list[int], list[int]] | None:
    from longrag.retrieval.cfic import split_prompt

    head, tail = split_prompt(tokenizer, ex["document"], ex["question"])  # tokenized as the extractor does
    prompt = head + tail
    target = tokenizer(ex["evidence"], add_special_tokens=False)["input_ids"] if ex["evidence"] else []
    target = target + [stop_id]
    ids = prompt + target
    if len(ids) > max_tokens:
        return None
    labels = [-100] * len(prompt) + target
    return ids, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default=".cache/cfic-smollm2-lora")
    ap.add_argument("--minutes", type=float, default=15.0, help="stop after this wall time (0: no limit)")
    ap.add_argument("--examples", type=int, default=4000, help="most training examples to read")
    ap.add_argument("--window", type=int, default=1, help="paragraphs per document (1: the paragraph)")
    ap.add_argument("--max-chars", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--negatives", type=float, default=0.15)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from longrag.generation.decoding import stop_token_ids
    from longrag.generation.packed import unpack_linears
    from longrag.models.registry import load_decoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dec = load_decoder(args.model, device=args.device)
    tok, model = dec.tokenizer, dec.model
    unpack_linears(model)  # PEFT wraps plain nn.Linear layers (generation/packed.py)
    stop_id = tok.convert_tokens_to_ids("<|im_end|>")
    if not isinstance(stop_id, int) or stop_id < 0:
        stop_id = sorted(stop_token_ids(tok))[0]
    model.train()
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.05,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples = build_examples(DATA, window=args.window, negatives=args.negatives, seed=args.seed,
                              max_chars=args.max_chars)[: args.examples]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.jsonl"
    log_f = log_path.open("w")
    header = {"cmd": "python -m bench.train_cfic " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "model": args.model, "trainable_params": trainable, "examples_available": len(examples),
              "data": "SQuAD v1.1 dev part 1 (answer-bearing sentence; 15% negatives)"}
    log_f.write(json.dumps(header) + "\n")
    print(header, flush=True)
    t0 = time.perf_counter()
    step, seen, running = 0, 0, None
    warmup = 10
    for ex in examples:
        if args.minutes and time.perf_counter() - t0 > args.minutes * 60:
            break
        enc = encode(tok, ex, stop_id, args.max_tokens)
        if enc is None:
            continue
        ids, labels = enc
        x = torch.tensor([ids], device=args.device)
        y = torch.tensor([labels], device=args.device)
        loss = model(input_ids=x, labels=y).loss
        (loss / args.accum).backward()
        seen += 1
        running = float(loss) if running is None else 0.9 * running + 0.1 * float(loss)
        if seen % args.accum == 0:
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / warmup)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            rec = {"step": step, "examples": seen, "loss": round(float(loss), 4), "ema_loss": round(running, 4),
                   "tokens": len(ids), "elapsed_s": round(time.perf_counter() - t0, 1)}
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            if step % 5 == 0:
                print(rec, flush=True)
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template; the log says what this is
    summary = {"done": True, "steps": step, "examples_seen": seen, "final_ema_loss": running,
               "elapsed_s": round(time.perf_counter() - t0, 1)}
    log_f.write(json.dumps(summary) + "\n")
    log_f.close()
    print(summary, flush=True)


if __name__ == "__main__":
    main()
