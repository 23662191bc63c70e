"""The ``sentencekv`` attention function, registered with transformers (no fork of modeling code).

The function is registered in transformers' ``AttentionInterface`` (and ``sdpa``'s mask
function under the same name). The model switches to it only inside
:func:`sentencekv_attention`; when a forward call does not pass a SentenceKV cache in
``sentencekv=...`` it is exactly ``sdpa``, so a request running at the same moment without one
is unaffected. With a cache it routes each layer to the cache: full ``sdpa`` (then compression)
during the prefill's last chunk, :meth:`~SentenceKVCache.attend_append` for appended tokens and
:meth:`~SentenceKVCache.attend_generated` for generated ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from longrag.generation.fastkv import ATTN_NAME as FAST_ATTN, register_sdpa_like
from longrag.generation.sentencekv.cache import SentenceKVCache
from longrag.generation.sentencekv.config import SentenceKVError
from longrag.generation.sentencekv.store import SentenceKVLayer

ATTN_NAME = "sentencekv"


def sentencekv_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None, *,
                                 sentencekv: SentenceKVCache | None = None, scaling: float | None = None,
                                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``sdpa`` unless a :class:`SentenceKVCache` is passed as ``sentencekv=``."""
    cache = sentencekv
    if cache is None or cache.full:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise SentenceKVError("SentenceKV supports batch size 1 only")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer: SentenceKVLayer = cache.layers[module.layer_idx]
    if not layer.compressed:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        if layer.seen >= cache.prompt_tokens:  # the prompt's last chunk: compress this layer now
            cache.compress_layer(module.layer_idx, query, key, value)
        return out, None
    if cache._gen_pending is not None:
        out = cache.attend_generated(module.layer_idx, query, key, value, scale)
    else:
        out = cache.attend_append(module.layer_idx, query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Register the ``sentencekv`` attention and mask functions with transformers (idempotent)."""
    register_sdpa_like(ATTN_NAME, sentencekv_attention_forward)


_switch_lock = threading.RLock()


@contextmanager
def sentencekv_attention(model: Any) -> Iterator[None]:
    """Run the model with the ``sentencekv`` attention function, then restore its previous one."""
    register_attention()
    with _switch_lock:
        previous = model.config._attn_implementation
        if previous not in ("sdpa", FAST_ATTN, ATTN_NAME):
            raise SentenceKVError(f"SentenceKV needs an sdpa-attention model, got {previous!r}")
        model.set_attn_implementation(ATTN_NAME)
        try:
            yield
        finally:
            model.set_attn_implementation(previous)
