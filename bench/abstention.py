"""Would the decoder's confidence tell unanswerable questions apart? A threshold sweep over
``stats.confidence`` (exp of the answer tokens' mean log-probability) on answers already
recorded by ``bench.books``: abstaining below the threshold, the share of unanswerable
questions abstained on against the accuracy left on the answerable ones.

    python -m bench.abstention [--rows bench/results/books/squad2-doc-longrag.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.books import OUT, contains
from bench.common import write_result


def sweep(rows: list[dict], thresholds: list[float]) -> dict:
    answerable = [r for r in rows if r["gold"]]
    unanswerable = [r for r in rows if not r["gold"]]

    def right(r: dict) -> bool:
        return r["answerable"] and any(contains(r["answer"], g) for g in r["gold"])

    def conf(r: dict) -> float:
        return r["stats"].get("confidence") or 0.0

    out = {"answerable": len(answerable), "unanswerable": len(unanswerable),
           "median_confidence": {
               "right": statistics.median(conf(r) for r in answerable if right(r)),
               "wrong": statistics.median(conf(r) for r in answerable if not right(r)),
               "unanswerable": statistics.median(conf(r) for r in unanswerable)},
           "sweep": []}
    for t in [0.0, *thresholds]:
        out["sweep"].append({
            "threshold": t,
            "accuracy_answerable": round(sum(right(r) and conf(r) >= t for r in answerable) / len(answerable), 3),
            "abstains_unanswerable": round(sum(not r["answerable"] or conf(r) < t for r in unanswerable)
                                           / len(unanswerable), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=OUT / "squad2-doc-longrag.jsonl")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    result = sweep(rows, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    write_result("abstention", {"rows": str(args.rows), **result})
    for s in result["sweep"]:
        print(s)


if __name__ == "__main__":
    main()
