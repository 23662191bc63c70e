"""Sentences on token ids: the buckets SentenceKV ranks.

A sentence ends after a token whose text ends in ``. ! ?`` (closing quotes and brackets may
follow) or contains a newline; a run of such tokens stays in one sentence, and a sentence longer
than ``max_len`` tokens is cut into pieces. The prompt is segmented at once; generated tokens
are placed one at a time as they are decoded (:class:`GenStep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_END_CHARS = (".", "!", "?", "。", "！", "？", "…")
_CLOSERS = " \t\"'”’)]»"
_boundary_cache: dict[tuple[str, int], frozenset[int]] = {}


def boundary_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens that end a sentence: '.', '!', '?' (before closing quotes) or a newline."""
    key = (str(getattr(tokenizer, "name_or_path", "")), len(tokenizer))
    if key not in _boundary_cache:
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)])
        ids = {i for i, t in enumerate(texts) if "\n" in t or t.rstrip(_CLOSERS).endswith(_END_CHARS)}
        ids -= set(getattr(tokenizer, "all_special_ids", []) or [])
        _boundary_cache[key] = frozenset(ids)
    return _boundary_cache[key]


def segment_sentences(ids: Sequence[int], boundaries: frozenset[int], max_len: int) -> np.ndarray:
    """Sentence index of every token (0-based, non-decreasing).

    A sentence ends after a boundary token (a run of boundary tokens stays together) and is cut
    every ``max_len`` tokens; a prompt without any boundary becomes ``max_len``-token pieces.
    """
    arr = np.asarray(list(ids), dtype=np.int64)
    n = arr.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    is_b = np.isin(arr, np.fromiter(boundaries, dtype=np.int64, count=len(boundaries)))
    close = is_b.copy()
    close[:-1] &= ~is_b[1:]
    start_new = np.zeros(n, dtype=bool)
    start_new[1:] = close[:-1]
    raw = np.cumsum(start_new)
    starts = np.flatnonzero(np.r_[True, start_new[1:]])
    within = np.arange(n) - starts[raw]
    piece = within // max_len
    change = np.zeros(n, dtype=bool)
    change[1:] = (raw[1:] != raw[:-1]) | (piece[1:] != piece[:-1])
    return np.cumsum(change)


@dataclass(frozen=True, slots=True)
class GenStep:
    """Where one generated token stands: its sentence, that sentence's first position, the number
    of sentences counting it, and whether it opens the sentence (the mean query restarts)."""

    sid: int
    start: int
    n_sentences: int
    opens: bool
