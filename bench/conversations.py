"""Follow-up questions over whole novels: three-turn conversations through the product path.

Each conversation's second and third questions depend on the first (a pronoun that points back).
Every turn goes the way a user's does (``POST /v1/conversations/{id}/messages`` / ``longrag
chat``): :func:`~longrag.services.conversations.standalone_question` rewrites it from the turns
stored so far, then ``QAPipeline.ask`` answers over the book with every default. Measured per
turn: whether the rewrite names the intended referent, answer accuracy (a normalised alias occurs
in the answer) and seconds; beside it, the same questions asked as written (no rewrite).

    python -m bench.conversations          # -> bench/results/conversations.json
"""

from __future__ import annotations

import argparse
import logging
import time

from bench.books import WORK, Longrag, books_set, contains
from bench.common import hardware, set_threads, write_result

log = logging.getLogger("bench.conversations")

# (book key prefix, [(question, referent the rewrite must name or None, answer aliases)])
CONVERSATIONS: list[tuple[str, list[tuple[str, str | None, tuple[str, ...]]]]] = [
    ("pg2701", [
        ("Who is the captain of the Pequod?", None, ("Ahab",)),
        ("Which whale took off his leg?", "Ahab", ("Moby Dick", "white whale")),
        ("What gold coin does he nail to the mast?", "Ahab", ("doubloon", "Spanish ounce")),
    ]),
    ("pg1342", [
        ("Who is Mr. Collins's patroness?", None, ("Lady Catherine de Bourgh", "Lady Catherine")),
        ("What is the name of her residence?", "Lady Catherine", ("Rosings",)),
        ("Who is her daughter's cousin that Lady Catherine wants her daughter to marry?", "Lady Catherine",
         ("Darcy",)),
    ]),
    ("pg84", [
        ("Who is Victor Frankenstein's youngest brother, who is murdered?", None, ("William",)),
        ("Which servant is accused of his murder?", "William", ("Justine",)),
        ("In which city does she live with the family?", "Justine", ("Geneva",)),
    ]),
]


def run(decoder: str | None) -> dict:
    from longrag.services.conversations import Turn, standalone_question
    from longrag.services.qa import Question

    qaset = books_set("doc", "all")
    ours = Longrag(qaset, WORK / "books", decoder, {})
    rows = []
    for prefix, turns in CONVERSATIONS:
        key = next(k for k in ours.doc_ids if k.startswith(prefix))
        doc_ids = [ours.doc_ids[key]]
        history: list[Turn] = []
        for i, (question, referent, gold) in enumerate(turns):
            standalone = standalone_question(history, question)
            t0 = time.perf_counter()
            ans = ours.pipe.ask(Question(standalone, doc_ids=doc_ids))
            seconds = time.perf_counter() - t0
            plain = ours.pipe.ask(Question(question, doc_ids=doc_ids)) if i else ans  # as written
            history.append(Turn(question, standalone, ans.to_dict(), time.time()))
            rows.append({
                "book": key, "turn": i, "question": question, "standalone_question": standalone,
                "rewrite_names_referent": None if referent is None else referent.lower() in standalone.lower(),
                "gold": list(gold), "answer": ans.answer, "right": any(contains(ans.answer, g) for g in gold),
                "answer_without_rewrite": plain.answer,
                "right_without_rewrite": any(contains(plain.answer, g) for g in gold),
                "seconds": round(seconds, 2),
            })
            log.info("%s turn %d: %r -> %r (%s)", key, i, standalone, ans.answer, rows[-1]["right"])
    follow = [r for r in rows if r["turn"] > 0]
    summary = {
        "conversations": len(CONVERSATIONS), "turns": len(rows),
        "accuracy_all_turns": round(sum(r["right"] for r in rows) / len(rows), 3),
        "accuracy_follow_ups": round(sum(r["right"] for r in follow) / len(follow), 3),
        "accuracy_follow_ups_without_rewrite": round(sum(r["right_without_rewrite"] for r in follow) / len(follow), 3),
        "rewrites_naming_referent": round(sum(bool(r["rewrite_names_referent"]) for r in follow) / len(follow), 3),
        "conversations_all_right": sum(all(r["right"] for r in rows if r["book"] == b)
                                       for b in {r["book"] for r in rows}),
    }
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoder", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(2)
    from longrag.config import Settings

    out = run(args.decoder)
    write_result("conversations", {"setup": {"decoder": args.decoder or Settings().decoder}, "hardware": hardware(), **out})
    print(out["summary"])


if __name__ == "__main__":
    main()
