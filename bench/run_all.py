"""Run the core benchmarks in sequence (``make bench``); each writes ``bench/results/*.json``.

    python -m bench.run_all [--quick] [--skip e2e,decoder]

``--quick`` uses small samples (a smoke run: 1,000 SQuAD questions, 30 end-to-end questions).
The technique benchmarks (situated, cfic, sentencekv, rapid, refrag, load) have their own
modules, listed in bench/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

STEPS: dict[str, list[str]] = {
    "segmenters": ["bench.segmenters"],
    "faiss": ["bench.faiss_speed"],
    "embed": ["bench.embed_speed"],
    "decoder": ["bench.decoder_speed"],
    "retrieval": ["bench.eval_core", "--only", "squad,hotpot,cranfield"],
    "ingest": ["bench.eval_core", "--only", "ingest"],
    "e2e": ["bench.e2e_squad", "--n", "300"],
}
QUICK = {"retrieval": ["--squad-n", "1000"], "e2e": ["--n", "30"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", default="")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    failed = []
    for name, cmd in STEPS.items():
        if name in skip or (only and name not in only):
            continue
        full = [sys.executable, "-m", *cmd]
        if args.quick and name in QUICK:
            full = [*full[:3], *[a for a in cmd[1:] if a not in ("--n", "300")], *QUICK[name]]
        print(f"== {name}: {' '.join(full[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(full)
        print(f"== {name}: exit {rc} in {time.perf_counter() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
