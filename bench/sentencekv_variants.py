"""SentenceKV's comparison peers for bench/sentencekv.py, run on the same cache code.

* ``snapkv``: SnapKV retention only: the prefill keeps ``tau`` tokens per KV head (same scoring
  as SentenceKV) and every generated token attends to all of them.
* ``streaming``: StreamingLLM: the prefill keeps the ``sink`` first and the last
  ``tau + recent`` tokens; every generated token attends to the sink and the last
  ``tau + recent`` positions.

Importing this module registers both as ``SentenceKVConfig(policy=...)`` values. :func:`fork`
lets several methods finish one shared, uncompressed prefill; :func:`to_dynamic` turns that
prefix into the full-KV peer's ``DynamicCache``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from longrag.generation.sentencekv import (
    GenStep,
    SelectionStats,
    SentenceKVCache,
    SentenceKVConfig,
    SentenceKVError,
    SentenceKVLayer,
    register_policy,
    snap_keep,
)


class SnapKVPeer:
    """Retention only: ``tau`` tokens per KV head kept at the prefill, all attended at decode."""

    def retain(self, cfg: SentenceKVConfig, query: torch.Tensor, k: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
        return snap_keep(cfg, query, k, cfg.budget, sid)

    def attend(self, cache: SentenceKVCache, layer: SentenceKVLayer, qbar: torch.Tensor, store_pos: torch.Tensor,
               totals: torch.Tensor, steps: Sequence[GenStep]) -> torch.Tensor:
        return (store_pos[None] >= 0) & (store_pos[None] < totals[:, None, None])


class StreamingPeer:
    """StreamingLLM: the sink plus a sliding window of ``tau + recent`` positions."""

    def retain(self, cfg: SentenceKVConfig, query: torch.Tensor, k: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
        h, n, _ = k.shape
        positions = torch.arange(n, device=k.device)
        keep = positions[(positions < cfg.sink) | (positions >= n - (cfg.budget + cfg.recent))]
        return keep[None].expand(h, -1)

    def attend(self, cache: SentenceKVCache, layer: SentenceKVLayer, qbar: torch.Tensor, store_pos: torch.Tensor,
               totals: torch.Tensor, steps: Sequence[GenStep]) -> torch.Tensor:
        cfg = cache.skv
        recent_from = (totals - (cfg.budget + cfg.recent))[:, None, None]
        later = store_pos[None] >= totals[:, None, None]
        return ((store_pos[None] < cfg.sink) | (store_pos[None] >= recent_from)) & ~later


register_policy("snapkv", SnapKVPeer())
register_policy("streaming", StreamingPeer())


def fork(cache: SentenceKVCache, skv: SentenceKVConfig | None = None) -> SentenceKVCache:
    """A cache sharing ``cache``'s uncompressed prompt prefix (same announced prompt).

    Lets several policies finish the same prefill without recomputing its first chunks; the
    prefix tensors are shared, never modified in place.
    """
    if any(layer.compressed for layer in cache.layers):
        raise SentenceKVError("fork needs a cache that is not compressed yet")
    other = SentenceKVCache.__new__(SentenceKVCache)
    Cache.__init__(other, layers=[SentenceKVLayer() for _ in cache.layers])
    other.__dict__.update({k: v for k, v in cache.__dict__.items() if k not in ("layers", "stats", "skv")})
    other.skv = skv or cache.skv
    other.stats = SelectionStats()
    other.full = cache.prompt_tokens <= other.skv.full_kv_limit
    other.token_sid = list(cache.token_sid)
    other._gen_log = list(cache._gen_log)
    for mine, theirs in zip(cache.layers, other.layers):
        theirs.__dict__.update(mine.__dict__)
        theirs.gen_q = list(mine.gen_q)
    return other


def to_dynamic(cache: SentenceKVCache) -> DynamicCache:
    """The uncompressed prefix of ``cache`` as a transformers ``DynamicCache`` (the full-KV peer)."""
    return DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in cache.layers])
