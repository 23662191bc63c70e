"""Decoder load time from the safetensors cache and time to first token for a 512-token prompt.

    python -m bench.decoder_speed [--decoders qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct]

Each decoder is loaded in a fresh subprocess (so the per-process registry cache and warm
Python imports do not flatter the figure) from the dequantized cache made by
``longrag prepare-models``; then TTFT (prefill of 512 prompt tokens + first token) is timed
``--reps`` times in that process. ``bench/results/decoder_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import hardware, write_result

CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from longrag.models import registry
name, reps = sys.argv[1], int(sys.argv[2])
location, _ = registry.resolve(name)  # cache exists: only a manifest check
t0 = time.perf_counter()
from transformers import AutoConfig, AutoModelForCausalLM
AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(location))]  # imports the model's code
import_s = time.perf_counter() - t0
t0, c0 = time.perf_counter(), time.process_time()
dec = registry.load_decoder(name, device="cpu")
load_s = time.perf_counter() - t0
load_cpu = time.process_time() - c0
from longrag.generation.decoding import generate
text = ("The history of the city is long and varied, with many events recorded in its archives. " * 60)
ids = dec.tokenizer(text, add_special_tokens=False)["input_ids"][:512]
generate(dec.model, dec.tokenizer, ids[:32], max_new_tokens=1)  # warm-up
ttft, cpu = [], []
for _ in range(reps):
    c0 = time.process_time()
    g = generate(dec.model, dec.tokenizer, ids, max_new_tokens=1)
    ttft.append(g.ttft_ms)
    cpu.append((time.process_time() - c0) * 1000)
print("RESULT" + json.dumps({"python_import_seconds": round(import_s, 2), "load_seconds_total": round(load_s, 2), "load_seconds_weights": round(dec.load_seconds, 2),
      "load_cpu_seconds": round(load_cpu, 2),
      "prompt_tokens": len(ids), "ttft_ms": [round(x, 1) for x in ttft], "ttft_ms_median": round(statistics.median(ttft), 1),
      "ttft_cpu_ms_median": round(statistics.median(cpu), 1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results = {}
    for name in args.decoders.split(","):
        proc = subprocess.run([sys.executable, "-c", CHILD, name, str(args.reps), str(args.threads)],
                              capture_output=True, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
        results[name] = json.loads(line[len("RESULT"):])
        print(name, results[name])
    write_result("decoder_speed", {
        "hardware": hardware(), "threads": args.threads, "device": "cpu", "dtype": "float32",
        "load": "tokenizer + from_pretrained of the cached safetensors in a fresh process, after the one-off "
                "Python imports of transformers and the model's code (python_import_seconds, paid once per "
                "process: a worker pays it at start) (target < 3 s)",
        "ttft": "prefill of a 512-token prompt + first greedy token (longrag.generation.decoding.generate)",
        "results": results,
    })


if __name__ == "__main__":
    main()
