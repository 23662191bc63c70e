"""Sentence segmenters against HotpotQA's gold sentence splits: boundary F1 and speed.

    python -m bench.segmenters

Gold: the 991 distinct paragraphs of the HotpotQA first-100 dev file, given as lists of
sentences; the paragraph text is their concatenation and the gold boundaries are the
sentence end offsets (the last one excluded, it is the paragraph end). A backend's
boundaries are the end offsets of its sentences (``longrag.retrieval.segment.BACKENDS``, raw
spans) after trimming whitespace; a predicted boundary counts when it equals a gold one
(after trimming). ``bench/results/segmenters.json``.
"""

from __future__ import annotations

import time

from bench.common import hardware, write_result
from bench.data import hotpot_gold_sentences


def _ends(text: str, spans: list[tuple[int, int]]) -> set[int]:
    out = set()
    for a, b in spans:
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.add(b)
    return out


def main() -> None:
    from longrag.retrieval.segment import BACKENDS

    paragraphs = hotpot_gold_sentences()
    texts, golds = [], []
    for sents in paragraphs:
        text = "".join(sents)
        pos, ends = 0, []
        for s in sents:
            pos += len(s)
            ends.append(pos)
        texts.append(text)
        golds.append(_ends(text, [(0, e) for e in ends]) - {len(text.rstrip())})
    results = {}
    for name, fn in BACKENDS.items():
        fn(texts[0])  # import / warm-up
        tp = fp = fn_ = 0
        t0 = time.perf_counter()
        preds = [fn(t) for t in texts]
        sec = time.perf_counter() - t0
        for text, gold, spans in zip(texts, golds, preds):
            pred = _ends(text, spans) - {len(text.rstrip())}
            tp += len(pred & gold)
            fp += len(pred - gold)
            fn_ += len(gold - pred)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn_) if tp + fn_ else 0.0
        chars = sum(len(t) for t in texts)
        results[name] = {"precision": round(p, 4), "recall": round(r, 4),
                         "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
                         "seconds": round(sec, 3), "chars_per_s": round(chars / sec)}
        print(name, results[name])
    best = max(results, key=lambda k: results[k]["f1"])
    write_result("segmenters", {
        "hardware": hardware(),
        "data": {"paragraphs": len(texts), "gold_boundaries": sum(len(g) for g in golds),
                 "source": "HotpotQA dev distractor first-100 file (sentence lists)"},
        "results": results, "best_f1": best, "default": "blingfire",
    })


if __name__ == "__main__":
    main()
