"""Long-context decoding on CPU: a KV cache that does not copy itself, and grouped-query attention
for short query blocks without repeating the keys (same math as transformers' ``sdpa`` path).

Two costs dominate a decode step of a small GQA decoder (SmolLM2: 9 query heads, 3 KV heads) at
4k-8k tokens of context on a CPU, besides the weights:

* ``DynamicCache`` appends with ``torch.cat``, so every step copies the whole cache (at 8k tokens,
  ~370 MB for SmolLM2);
* for a block of 2..64 query tokens (speculative verification, CFIC's evidence steps) transformers'
  ``sdpa`` path repeats every KV head to the query heads (``repeat_kv``) and runs the masked
  kernel on the copies; for a single token it already packs the query heads onto their KV head.

:class:`GrowingCache` keeps each layer's keys/values in a preallocated buffer (a little headroom,
grown when needed) and hands the model views of it; ``crop`` is free. The ``longrag_sdpa`` attention
(registered with transformers by :func:`use_fast_attention`) packs the query heads of a short block
onto their KV head (rows ordered group-major) with the block's causal mask tiled to match, and
otherwise defers to transformers' ``sdpa`` function unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "longrag_sdpa"
PACK_MAX_QUERY = 64  # longer blocks (prefill) gain nothing from packing and keep the flash path


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values are views of a buffer with headroom (no per-step copy)."""

    min_headroom = 256

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def _owns(self, t: torch.Tensor, buf: torch.Tensor | None) -> bool:
        return buf is not None and t.numel() > 0 and t.data_ptr() == buf.data_ptr() and t.shape[:-2] == buf.shape[:-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.dim() == key_states.dim() else 0
        add = key_states.shape[-2]
        owned = self._owns(self.keys, self._k) and self._owns(self.values, self._v)
        if not owned or n + add > self._k.shape[-2]:
            cap = n + add + max(self.min_headroom, (n + add) // 8)
            k = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
            if n:
                k[..., :n, :] = self.keys
                v[..., :n, :] = self.values
            self._k, self._v = k, v
        self._k[..., n : n + add, :] = key_states
        self._v[..., n : n + add, :] = value_states
        self.keys = self._k[..., : n + add, :]
        self.values = self._v[..., : n + add, :]
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` made of :class:`GrowingLayer` (same interface: crop, seq length, masks)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def new_cache() -> DynamicCache:
    """The KV cache the decoding loops use."""
    return GrowingCache()


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, *, scaling: float | None = None,
                        dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, with the query heads of a short block packed onto their KV head."""
    groups = getattr(module, "num_key_value_groups", 1)
    b, h, q_len, d = query.shape
    s = key.shape[2]
    if (groups <= 1 or q_len == 1 or q_len > PACK_MAX_QUERY or dropout > 0 or kwargs.get("softcap") is not None
            or (attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    # (b, kv_heads * groups, q, d) -> (b, kv_heads, groups * q, d): row g * q + i is query i of group g
    packed = query.reshape(b, h // groups, groups * q_len, d)
    if attention_mask is None:  # causal, the block being the last q_len positions
        mask = torch.ones(q_len, s, dtype=torch.bool, device=query.device).tril(s - q_len)[None, None]
    else:
        mask = attention_mask[..., -s:]
    mask = mask.repeat(1, 1, groups, 1)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, h, q_len, d).transpose(1, 2).contiguous(), None


_lock = threading.Lock()
_registered: set[str] = set()


def register_sdpa_like(name: str, fn: Any) -> None:
    """Register an attention function that takes ``sdpa``'s masks with transformers (idempotent)."""
    with _lock:
        if name not in _registered:
            AttentionInterface.register(name, fn)
            AttentionMaskInterface.register(name, sdpa_mask)
            _registered.add(name)


def register_attention() -> None:
    """Register ``longrag_sdpa`` with transformers (idempotent)."""
    register_sdpa_like(ATTN_NAME, packed_sdpa_forward)


def use_fast_attention(model: Any) -> Any:
    """Switch an ``sdpa`` model to ``longrag_sdpa`` (other implementations are left alone)."""
    register_attention()
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(ATTN_NAME)
    return model
