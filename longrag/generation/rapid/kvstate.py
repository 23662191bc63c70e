"""KV state: a model with its cache and the exact tokens the cache holds.

The target and the drafter each keep one. After every verification the target's cache is cropped
back to the committed tokens; the drafter's is cropped lazily at its next proposal (``advance``
reuses the longest common prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from longrag.generation.decoding import common_prefix
from longrag.generation.fastkv import new_cache


def crop_to(cache: DynamicCache, length: int) -> None:
    """Crop ``cache`` to its first ``length`` positions (transformers 5 ``crop`` takes -removed)."""
    have = cache.get_seq_length()
    if length < have:
        cache.crop(length - have)


@dataclass
class KVState:
    """A causal LM, its ``DynamicCache`` and the token ids whose keys/values the cache holds.

    ``advance(seq)`` brings the cache to ``seq[:-1]`` plus whatever it must feed, reusing the
    longest common prefix, and returns the logits after feeding the pending tokens.
    """

    model: Any
    cache: DynamicCache = field(default_factory=new_cache)
    tokens: list[int] = field(default_factory=list)
    prefill_chunk: int = 2048

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def crop(self, length: int) -> None:
        crop_to(self.cache, length)
        del self.tokens[length:]

    @torch.inference_mode()
    def feed(self, ids: Sequence[int], *, keep: int = 1) -> torch.Tensor:
        """Append ``ids`` to the cache; return float logits of the last ``keep`` positions ``[keep, V]``."""
        if not ids:
            raise ValueError("nothing to feed")
        ids = [int(i) for i in ids]
        keep = max(1, min(keep, len(ids)))
        head, tail = ids[: len(ids) - keep], ids[len(ids) - keep :]
        for s in range(0, len(head), self.prefill_chunk):
            piece = torch.tensor([head[s : s + self.prefill_chunk]], dtype=torch.long, device=self.device)
            self.model(input_ids=piece, cache=self.cache, use_cache=True, logits_to_keep=1)
        t = torch.tensor([tail], dtype=torch.long, device=self.device)
        logits = self.model(input_ids=t, cache=self.cache, use_cache=True, logits_to_keep=keep).logits[0].float()
        self.tokens.extend(ids)
        return logits

    def advance(self, seq: Sequence[int], *, extra: Sequence[int] = (), keep: int = 1) -> torch.Tensor:
        """Make the cache hold ``seq`` (+ ``extra``), feeding at least one token; return logits.

        The cache is cropped to the common prefix with ``seq`` (at most ``len(seq) - 1`` so the
        last token is always fed), then ``seq``'s remaining tokens and ``extra`` are fed.
        """
        keep_len = min(common_prefix(self.tokens, seq), len(seq) - 1)
        self.crop(max(0, keep_len))
        pending = list(seq[len(self.tokens) :]) + list(extra)
        return self.feed(pending, keep=keep)

    def prefill(self, seq: Sequence[int]) -> None:
        """Fill the cache with ``seq[:-1]`` (the last token is fed by the first step)."""
        keep_len = min(common_prefix(self.tokens, seq), len(seq) - 1)
        self.crop(max(0, keep_len))
        rest = list(seq[len(self.tokens) : len(seq) - 1])
        if rest:
            self.feed(rest)


class TargetState(Protocol):
    """What the speculative loop needs of the target's cache: :class:`KVState`, or
    :class:`longrag.generation.sentencekv.SentenceKVState` for a SentenceKV target."""

    tokens: list[int]

    def prefill(self, seq: Sequence[int]) -> None: ...

    def advance(self, seq: Sequence[int], *, extra: Sequence[int] = (), keep: int = 1) -> torch.Tensor: ...

    def crop(self, length: int) -> None: ...
