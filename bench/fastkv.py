"""Decode step and block verification cost: transformers' stock path vs longrag's fastkv path,
with and without pre-packed linear weights.

    python -m bench.fastkv [--decoder smollm2-135m-instruct] [--lengths 1100 4096 8000] [--threads 2]
                          [--skip-stock] [--out fastkv]

For each context length the same random-token context is prefilled twice: once with the stock
``sdpa`` attention, ``DynamicCache`` (which concatenates on every step) and plain ``nn.Linear``
layers, once with ``longrag_sdpa`` (query heads of a short block packed onto their KV head) and
``GrowingCache`` (views of a buffer with headroom). Then, on each cache: the median time of one
forward of 1, 2, 4, 6 and 11 new tokens (cropped back after each; the block sizes RAPID
verifies) and of a 512-token block (a prefill chunk at that depth), and the mean time per step of
8 consecutive single-token decode steps (no crop: the stock cache copies itself each step).
On the fastkv cache the same measurements run with plain linear layers (``fastkv``) and with
oneDNN pre-packed weights (``packed``, generation/packed.py, the product's CPU default),
alternated twice (plain, packed, plain, packed) so drift hits both. Writes
``bench/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import hardware, set_threads, write_result

BLOCKS = (1, 2, 4, 6, 11, 512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoder", default="smollm2-135m-instruct")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1100, 4096, 8000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-stock", action="store_true", help="measure only fastkv vs packed (one prefill)")
    ap.add_argument("--out", default="fastkv")
    args = ap.parse_args()
    set_threads(args.threads)

    import torch
    from transformers import DynamicCache

    from longrag.generation import fastkv
    from longrag.generation.packed import pack_linears, unpack_linears
    from longrag.models.registry import load_decoder

    model = load_decoder(args.decoder).model
    unpack_linears(model)
    rows = []
    for n in args.lengths:
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(100, 40000, (1, n), generator=g)
        row: dict = {"context_tokens": n}
        paths = [("fastkv", fastkv.ATTN_NAME, fastkv.new_cache)]
        if not args.skip_stock:
            paths.insert(0, ("stock", "sdpa", DynamicCache))
        for path, attn, make in paths:
            fastkv.register_attention()
            model.set_attn_implementation(attn)
            cache = make()
            with torch.inference_mode():
                for s in range(0, n, 2048):
                    model(input_ids=ids[:, s : s + 2048], cache=cache, use_cache=True, logits_to_keep=1)

                def forward_s(k: int, cache=cache) -> list[float]:
                    times = []
                    for _ in range(args.reps if k < 512 else max(1, args.reps // 2)):
                        x = torch.randint(100, 40000, (1, k), generator=g)
                        t0 = time.perf_counter()
                        model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=k if k < 512 else 1)
                        times.append(time.perf_counter() - t0)
                        cache.crop(-k)
                    return times

                def decode_s(cache=cache) -> float:
                    t0 = time.perf_counter()
                    for _ in range(8):
                        model(input_ids=torch.randint(100, 40000, (1, 1), generator=g), cache=cache, use_cache=True)
                    took = (time.perf_counter() - t0) / 8
                    cache.crop(-8)
                    return took

                variants = [(path, False)] if path == "stock" else [(path, False), ("packed", True)] * 2
                samples: dict[str, dict[str, list[float]]] = {}
                for name, packed in variants:
                    (pack_linears if packed else unpack_linears)(model)
                    got = samples.setdefault(name, {})
                    for k in BLOCKS:
                        got.setdefault(f"forward_{k}_ms", []).extend(forward_s(k))
                    got.setdefault("decode_step_ms", []).append(decode_s())
                unpack_linears(model)
            for name, got in samples.items():
                res = {key: round(statistics.median(v) * 1000, 1) for key, v in got.items()}
                res["verify11_over_step"] = round(res["forward_11_ms"] / res["forward_1_ms"], 2)
                res["block512_tokens_per_s"] = round(512 / res["forward_512_ms"] * 1000, 1)
                row[name] = res
        if "stock" in row:
            row["decode_speedup"] = round(row["stock"]["decode_step_ms"] / row["fastkv"]["decode_step_ms"], 3)
            row["verify11_speedup"] = round(row["stock"]["forward_11_ms"] / row["fastkv"]["forward_11_ms"], 3)
        for key in ("decode_step_ms", "forward_11_ms", "forward_512_ms"):
            row[f"packed_{key.removesuffix('_ms')}_speedup"] = round(row["fastkv"][key] / row["packed"][key], 3)
        rows.append(row)
        print(row, flush=True)
    model.set_attn_implementation(fastkv.ATTN_NAME)
    pack_linears(model)
    write_result(args.out, {"hardware": hardware(), "decoder": args.decoder, "threads": args.threads,
                            "reps": args.reps, "rows": rows})


if __name__ == "__main__":
    main()
