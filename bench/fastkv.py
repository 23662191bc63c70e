"""Decode step and block verification cost: transformers' stock path vs longrag's fastkv path.

    python -m bench.fastkv [--decoder smollm2-135m-instruct] [--lengths 1100 4096 8000] [--threads 2]

For each context length the same random-token context is prefilled twice: once with the stock
``sdpa`` attention and ``DynamicCache`` (which concatenates on every step), once with
``longrag_sdpa`` (query heads of a short block packed onto their KV head) and ``GrowingCache``
(views of a buffer with headroom). Then, on each cache: the median time of one forward of
1, 2, 4, 6 and 11 new tokens (cropped back after each; the block sizes RAPID verifies) and the
mean time per step of 8 consecutive single-token decode steps (no crop: the stock cache copies
itself each step). Writes ``bench/results/fastkv.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import hardware, set_threads, write_result

BLOCKS = (1, 2, 4, 6, 11)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoder", default="smollm2-135m-instruct")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1100, 4096, 8000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)

    import torch
    from transformers import DynamicCache

    from longrag.generation import fastkv
    from longrag.models.registry import load_decoder

    model = load_decoder(args.decoder).model
    rows = []
    for n in args.lengths:
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(100, 40000, (1, n), generator=g)
        row: dict = {"context_tokens": n}
        for path, attn, make in (("stock", "sdpa", DynamicCache), ("fastkv", fastkv.ATTN_NAME, fastkv.new_cache)):
            fastkv.register_attention()
            model.set_attn_implementation(attn)
            cache = make()
            with torch.inference_mode():
                for s in range(0, n, 2048):
                    model(input_ids=ids[:, s : s + 2048], cache=cache, use_cache=True, logits_to_keep=1)

                def forward_ms(k: int, cache=cache) -> float:
                    times = []
                    for _ in range(args.reps):
                        x = torch.randint(100, 40000, (1, k), generator=g)
                        t0 = time.perf_counter()
                        model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=k)
                        times.append(time.perf_counter() - t0)
                        cache.crop(-k)
                    return round(statistics.median(times) * 1000, 1)

                res = {f"forward_{k}_ms": forward_ms(k) for k in BLOCKS}
                t0 = time.perf_counter()
                for _ in range(8):
                    model(input_ids=torch.randint(100, 40000, (1, 1), generator=g), cache=cache, use_cache=True)
                res["decode_step_ms"] = round((time.perf_counter() - t0) / 8 * 1000, 1)
            res["verify11_over_step"] = round(res["forward_11_ms"] / res["forward_1_ms"], 2)
            row[path] = res
        row["decode_speedup"] = round(row["stock"]["decode_step_ms"] / row["fastkv"]["decode_step_ms"], 3)
        row["verify11_speedup"] = round(row["stock"]["forward_11_ms"] / row["fastkv"]["forward_11_ms"], 3)
        rows.append(row)
        print(row, flush=True)
    model.set_attn_implementation(fastkv.ATTN_NAME)
    write_result("fastkv", {"hardware": hardware(), "decoder": args.decoder, "threads": args.threads,
                            "reps": args.reps, "rows": rows})


if __name__ == "__main__":
    main()
