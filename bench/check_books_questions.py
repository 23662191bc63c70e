"""Validate ``bench/books_questions.json`` against the Gutenberg books it quotes.

    python bench/check_books_questions.py [--json PATH] [--books-dir DIR]

Standard library only. Each book is read exactly as the question file specifies
(``open(path, encoding="utf-8").read()``, i.e. universal newlines). Checks:

* ids are unique and every question names a book listed in ``books``;
* answerable questions have a non-empty ``answers`` list and at least one evidence item;
  for every evidence item ``text[start:end] == quote`` and the quote contains one of the
  answers literally (case-insensitive, no whitespace normalisation);
* unanswerable questions have ``answers == []`` and ``evidence == []``.

Prints the number of answerable / unanswerable questions per book and exits 1 on any failure.
The books directory defaults to ``$LONGRAG_DATASETS/gutenberg`` or ``../shared/datasets/gutenberg``
next to the repository (the same place ``bench.common.DATASETS`` points to).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "books_questions.json"
DEFAULT_BOOKS = Path(os.environ.get("LONGRAG_DATASETS", REPO.parent / "shared" / "datasets")) / "gutenberg"
KINDS = {"person", "place", "name", "relation", "number", "object", "event"}


def check(data: dict, books_dir: Path) -> tuple[list[str], dict[str, Counter]]:
    errors: list[str] = []
    counts: dict[str, Counter] = {}
    books = data.get("books")
    questions = data.get("questions")
    if not isinstance(books, dict) or not isinstance(questions, list):
        return ["top level must have 'books' (object) and 'questions' (list)"], counts

    texts: dict[str, str] = {}
    for name in books:
        path = books_dir / name
        try:
            texts[name] = open(path, encoding="utf-8").read()
        except OSError as exc:
            errors.append(f"cannot read book {name}: {exc}")
        counts[name] = Counter()

    ids = Counter(q.get("id") for q in questions)
    for qid, n in ids.items():
        if n > 1:
            errors.append(f"duplicate id {qid!r} ({n} times)")

    for q in questions:
        qid = q.get("id")
        book = q.get("book")
        if book not in books:
            errors.append(f"{qid}: book {book!r} is not listed in 'books'")
            continue
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            errors.append(f"{qid}: empty question")
        if q.get("kind") not in KINDS:
            errors.append(f"{qid}: kind {q.get('kind')!r} not in {sorted(KINDS)}")
        answers = q.get("answers")
        evidence = q.get("evidence")
        if not isinstance(answers, list) or not isinstance(evidence, list):
            errors.append(f"{qid}: 'answers' and 'evidence' must be lists")
            continue
        answerable = q.get("answerable")
        if answerable is False:
            counts[book]["unanswerable"] += 1
            if answers or evidence:
                errors.append(f"{qid}: unanswerable question must have empty answers and evidence")
            continue
        if answerable is not True:
            errors.append(f"{qid}: 'answerable' must be true or false")
            continue
        counts[book]["answerable"] += 1
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            errors.append(f"{qid}: answerable question needs non-empty string answers")
            continue
        if not evidence:
            errors.append(f"{qid}: answerable question has no evidence")
        text = texts.get(book)
        if text is None:
            continue
        lowered = [a.lower() for a in answers]
        for i, ev in enumerate(evidence):
            start, end, quote = ev.get("start"), ev.get("end"), ev.get("quote")
            if not (isinstance(start, int) and isinstance(end, int) and isinstance(quote, str)):
                errors.append(f"{qid}: evidence[{i}] needs int start/end and str quote")
                continue
            if not (0 <= start < end <= len(text)) or text[start:end] != quote:
                errors.append(f"{qid}: evidence[{i}] text[{start}:{end}] != quote")
            if not any(a in quote.lower() for a in lowered):
                errors.append(f"{qid}: evidence[{i}] quote contains none of the answers {answers}")
    return errors, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--books-dir", type=Path, default=DEFAULT_BOOKS)
    args = ap.parse_args()
    try:
        data = json.loads(args.json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"FAIL: cannot load {args.json}: {exc}")
        return 1
    errors, counts = check(data, args.books_dir)

    titles = data.get("books", {}) if isinstance(data.get("books"), dict) else {}
    print(f"{'book':<52} {'answerable':>10} {'unanswerable':>12}")
    tot = Counter()
    for name, c in counts.items():
        tot.update(c)
        print(f"{name:<52} {c['answerable']:>10} {c['unanswerable']:>12}   {titles.get(name, '')}")
    print(f"{'total':<52} {tot['answerable']:>10} {tot['unanswerable']:>12}")
    for e in errors:
        print("FAIL:", e)
    if errors:
        print(f"{len(errors)} problem(s)")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
