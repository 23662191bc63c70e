"""Reciprocal rank fusion (Cormack et al. 2009) of several ranked id lists."""

from __future__ import annotations

from collections.abc import Sequence


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], *, k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Fuse rankings (best first) into ``[(id, score)]`` sorted by ``sum w / (k + rank)``.

    Args:
        rankings: one list of ids per retriever, best first (rank 1 = first).
        k: the RRF constant; 60 is the usual choice.
        weights: optional weight per ranking (default 1 each).

    Ties are broken by first appearance, so the first ranking wins among equals.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking is required")
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        seen: set[int] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    order = {item: i for i, item in enumerate(dict.fromkeys(x for r in rankings for x in r))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))
