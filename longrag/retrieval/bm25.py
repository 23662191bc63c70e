"""Lexical retrieval: BM25 (``bm25s``) over arbitrary text units, any script.

Tokenisation is script-aware: Latin/Cyrillic/Arabic/... words are ``\\w+`` runs, lower-cased,
English stop words dropped and a light plural strip applied; CJK (Han, Kana, Hangul) runs,
which carry no spaces, become character unigrams plus bigrams so that a query word matches
inside a sentence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_CJK = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
    "\uac00-\ud7af"  # Hangul syllables
)
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")


def _stopwords() -> frozenset[str]:
    try:
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    except ImportError:  # pragma: no cover - bm25s always ships them
        return frozenset()


STOPWORDS = _stopwords()


def _light_stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Terms of ``text`` for BM25 (see the module docstring)."""
    out: list[str] = []
    for m in _TOKEN.finditer(text.lower()):
        tok = m.group()
        if _IS_CJK.match(tok):
            out.extend(tok)
            out.extend(tok[i : i + 2] for i in range(len(tok) - 1))
        elif tok not in STOPWORDS:
            out.append(_light_stem(tok))
    return out


@dataclass(frozen=True, slots=True)
class LexicalHit:
    id: int
    score: float


class BM25Index:
    """An in-memory BM25 index over units keyed by int ids.

    Args:
        ids: one id per text (chunk ids in the product).
        texts: the units' texts.
        k1, b: BM25 parameters (Lucene variant).
    """

    def __init__(self, ids: Sequence[int], texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        import bm25s

        # bm25s sets its own logger to DEBUG on import; let the application's configuration decide
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
        if len(ids) != len(texts):
            raise ValueError("one id per text is required")
        self.ids = np.asarray(ids, dtype=np.int64)
        self._pos = {int(i): p for p, i in enumerate(self.ids)}
        self._model = bm25s.BM25(k1=k1, b=b)
        tokens = [tokenize(t) for t in texts]
        self._empty = not any(tokens)  # bm25s needs at least one term in the corpus
        if not self._empty:
            # Units without terms are fine for bm25s (create_empty_token keeps the rows aligned).
            self._model.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit (in ``ids`` order) for ``query``."""
        terms = tokenize(query)
        if self._empty or not terms:
            return np.zeros(len(self.ids), np.float32)
        return np.asarray(self._model.get_scores(terms), dtype=np.float32)

    def search(self, query: str, k: int, *, allowed_ids: np.ndarray | None = None) -> list[LexicalHit]:
        """Top-``k`` units with a positive score, best first (optionally among ``allowed_ids``)."""
        scores = self.scores(query)
        if not len(scores):
            return []
        if allowed_ids is not None:
            mask = np.zeros(len(scores), bool)
            pos = [self._pos[int(i)] for i in allowed_ids if int(i) in self._pos]
            mask[pos] = True
            scores = np.where(mask, scores, 0.0)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [LexicalHit(int(self.ids[p]), float(scores[p])) for p in top if scores[p] > 0]
