"""The product path, as ``longrag eval`` runs it: every answer mode on needle documents, every
retriever and the plain and cfic modes on short-sentence documents.

    python -m bench.product [--suites needles,retrieval,answers] [--decoder NAME] [--modes plain,full,...]
                            [--lengths 2k,4k] [--needles 12]

Writes ``bench/results/product_eval[-<decoder>].json`` (needles),
``bench/results/product_retrieval.json`` (retrieval) and
``bench/results/product_answers[-<decoder>].json`` (answers) and prints the tables
(``longrag/services/evaluation.py``, ``retrieval_eval.py`` and ``answers_eval.py`` describe the
documents and the measures).
"""

from __future__ import annotations

import argparse
import logging

from bench.common import hardware, set_threads, write_result


def main() -> None:
    from longrag.cli import _lengths
    from longrag.config import Settings
    from longrag.services.answers_eval import run_answers_eval
    from longrag.services.evaluation import MODES, run_eval
    from longrag.services.retrieval_eval import run_retrieval_eval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="needles,retrieval,answers")
    ap.add_argument("--decoder", default=None)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--lengths", default="2k,4k,8k,16k")
    ap.add_argument("--needles", type=int, default=12)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(2)
    hw = hardware()
    suites = args.suites.split(",")
    if "retrieval" in suites:
        ranked = run_retrieval_eval()
        write_result("product_retrieval", {"setup": {"command": "longrag eval --suites retrieval / python -m "
                                                                "bench.product --suites retrieval",
                                                     "embedder": Settings().embedder},
                                           "hardware": hw, **ranked.to_dict()})
        print(ranked.table())
    if "answers" in suites:
        answered = run_answers_eval(decoder=args.decoder)
        decoder = args.decoder or Settings().decoder
        name = "product_answers" if args.decoder is None else f"product_answers-{decoder}"
        write_result(name, {"setup": {"decoder": decoder, "command": "longrag eval --suites answers / python -m "
                                                                     "bench.product --suites answers"},
                            "hardware": hw, **answered.to_dict()})
        print(answered.table())
    if "needles" in suites:
        report = run_eval(decoder=args.decoder, modes=args.modes.split(","), lengths=_lengths(args.lengths),
                          needles=args.needles)
        decoder = args.decoder or Settings().decoder
        name = "product_eval" if args.decoder is None else f"product_eval-{decoder}"
        write_result(name, {"setup": {"decoder": decoder, "command": "longrag eval / python -m bench.product",
                                      "modes": args.modes, "lengths": args.lengths, "needles": args.needles},
                            "hardware": hw, **report.to_dict()})
        print(report.table())


if __name__ == "__main__":
    main()
