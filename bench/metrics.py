"""Evaluation metrics: SQuAD answer EM/F1 (official v1.1 normalisation) and ranking metrics.

The answer metrics follow the official ``evaluate-v1.1.py`` of SQuAD exactly (lowercase, strip
punctuation, drop the articles a/an/the, collapse whitespace; max over the gold answers).
The exam metrics read which option of a multiple-choice question (L-Eval's "exam" tasks) an
answer picks. The ranking metrics take a ranked list of ids and the gold judgements of one query.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of a prediction: the max over the gold answers, as the official script does."""
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return max(exact_match(prediction, g) for g in golds), max(f1(prediction, g) for g in golds)


_OPTION_LINE = re.compile(r"^\s*\(?([A-D])[).]\s*(.+?)\s*$", re.M)
_LETTER = re.compile(r"(?:^|[\s(\[])([A-D])(?:[).:\]]|\s*$)")


def exam_options(question: str) -> dict[str, str]:
    """The lettered options of a multiple-choice question (lines ``(A) text`` or ``A. text``)."""
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(question)}


def exam_choice(answer: str, options: Mapping[str, str]) -> str | None:
    """The option an answer picks: its first standalone letter (``B``, ``(B) ...``, ``B. ...``,
    ``... is C``), else the one option whose normalised text the answer contains; ``None`` if neither.

    A letter counts only before a bracket, a full stop, a colon or the end, so an answer starting
    with the article "A" is not read as option A.
    """
    m = _LETTER.search(answer.strip())
    if m and m.group(1) in options:
        return m.group(1)
    said = normalize_answer(answer)
    hits = [k for k, text in options.items() if normalize_answer(text) and normalize_answer(text) in said]
    return hits[0] if len(hits) == 1 else None


def first_hit_rank(hits: Sequence[bool]) -> int | None:
    """1-based rank of the first relevant result, or None."""
    for i, h in enumerate(hits):
        if h:
            return i + 1
    return None


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the relevant ids (grade > 0) found in the top ``k``."""
    rel = {d for d, g in relevant.items() if g > 0}
    if not rel:
        raise ValueError("query without relevant documents")
    return len(rel & set(ranked[:k])) / len(rel)


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """nDCG@k with linear gains (the trec_eval / pytrec_eval ``ndcg_cut`` definition)."""
    gains = [float(relevant.get(d, 0.0)) for d in ranked[:k]]
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    if not ideal:
        raise ValueError("query without relevant documents")
    return dcg(gains) / dcg(ideal)


def hit_metrics(ranks: Sequence[int | None], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """recall@k (hit rate: a query counts when its first hit is within k) and MRR over queries.

    Args:
        ranks: for each query, the 1-based rank of the first hit, or None when none was found
            in the retrieved list (contributes 0 to MRR).
        ks: cut-offs.
    """
    n = len(ranks)
    if n == 0:
        raise ValueError("no queries")
    out = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n
    out["queries"] = n
    return out


def dedupe(ids: Sequence[str]) -> list[str]:
    """Keep the first occurrence of each id (chunks of the same document map to one id)."""
    seen: set[str] = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
