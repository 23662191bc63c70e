"""Headings as the context of the chunks under them, measured through the product path.

Each short-sentence document set is ingested twice by ``run_retrieval_eval``: as Markdown (its
``##`` headings become sections: situated vectors read each chunk with its heading path, BM25
indexes the path with the chunk) and as plain text (the same characters, no sections: every
chunk is situated by its neighbours only). The development set (``bench/situated_dev_docs.json``:
a bicycle catalogue, a walking club's travel log, an employee handbook) chose the method; the
evaluation set (``longrag/services/data/situated_docs.json``: staff profiles, board minutes, a
supply contract) is what ``longrag eval --suites retrieval`` reports. With ``--answers`` the
plain mode answers every question on both sets and both variants too (the default decoder;
Markdown: each sentence ranked and shown under its nearest heading).

    python -m bench.situated_headings [--answers]

Writes ``bench/results/situated_headings.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from bench.common import hardware, set_threads, write_result

DEV = Path(__file__).with_name("situated_dev_docs.json")


def as_plain_text(docs_path: Path, out: Path) -> Path:
    """The same documents as ``.txt`` files (no sections)."""
    docs = json.loads(docs_path.read_text(encoding="utf-8"))
    for d in docs:
        d["filename"] = Path(d["filename"]).with_suffix(".txt").name
    out.write_text(json.dumps(docs), encoding="utf-8")
    return out


def main() -> None:
    from longrag.services.answers_eval import run_answers_eval
    from longrag.services.retrieval_eval import DOCS, run_retrieval_eval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", action="store_true", help="also answer every question in the plain mode")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(2)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("dev", DEV), ("eval", DOCS)):
            for variant, docs in (("headings", path), ("no_headings", as_plain_text(path, Path(tmp) / f"{name}.json"))):
                report = run_retrieval_eval(docs_path=docs)
                results[f"{name}/{variant}"] = [s for s in report.summary() if s["doc"] == "all"]
                print(f"## {name}, {variant}\n{report.table()}\n")
                if args.answers:
                    answered = run_answers_eval(modes=["plain"], docs_path=docs)
                    results[f"{name}/{variant}/answers"] = answered.summary()
                    print(answered.table() + "\n")
    write_result("situated_headings", {"setup": {"command": "python -m bench.situated_headings"
                                                            + (" --answers" if args.answers else "")},
                                       "hardware": hardware(), "results": results})


if __name__ == "__main__":
    main()
