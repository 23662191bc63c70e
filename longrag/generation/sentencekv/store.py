"""One decoder layer's SentenceKV store: the retained KV rows and the sentence vectors.

Before compression a layer behaves like a ``DynamicLayer``. Afterwards it holds, per KV head,
the retained rows with their absolute positions and sentences, and per sentence the sum and
count of its retained keys, whose ratio is the sentence's mean key (the vector it is ranked by).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin

from longrag.generation.sentencekv.config import SentenceKVError
from longrag.generation.sentencekv.offload import empty_store


class SentenceKVLayer(CacheLayerMixin):
    """One decoder layer's SentenceKV state (batch size 1).

    Before compression it behaves like a ``DynamicLayer``. Afterwards it holds, per KV head,
    ``keys``/``values`` of shape ``[H, M, D]`` (M the same for every head, padded capacity
    beyond ``size``), the absolute position ``pos`` and sentence ``sid`` of each row, and per
    sentence the sum of its retained keys (``ksum``) and their count (``kcount``).
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.compressed = False
        self.seen = 0  # tokens this layer has processed (absolute position of the next one)
        self.size = 0  # rows in use in the compressed store
        self.pos: torch.Tensor | None = None
        self.sid: torch.Tensor | None = None
        self.ksum: torch.Tensor | None = None  # [H, S, D] float32, on the compute device
        self.kcount: torch.Tensor | None = None  # [H, S] float32
        self.qsum: torch.Tensor | None = None  # [Hq, D] float32: current generated sentence
        self.qn = 0
        self.gen_q: list[tuple[int, torch.Tensor]] = []  # (position, query [Hq, D]) per generated token

    # CacheLayerMixin interface ------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != 1:
            raise SentenceKVError("SentenceKV supports batch size 1 only; use a full (Dynamic) cache")
        n = key_states.shape[-2]
        if not self.compressed:
            if self.keys is None:
                self.keys, self.values = key_states, value_states
            else:
                self.keys = torch.cat([self.keys, key_states], dim=-2)
                self.values = torch.cat([self.values, value_states], dim=-2)
            self.seen += n
            return self.keys, self.values
        self.seen += n
        return key_states, value_states  # the attention function reads the store itself

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        held = self.keys.shape[-2] if (self.keys is not None and not self.compressed) else self.size
        return held + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def crop(self, length: int) -> int:
        """Drop the rows of positions >= ``length`` (appended after the prompt); return how many."""
        self.seen = min(self.seen, length)
        self.gen_q = [(p, q) for p, q in self.gen_q if p < length]
        if not self.compressed:
            if self.keys is not None and self.keys.shape[-2] > length:
                self.keys, self.values = self.keys[..., :length, :], self.values[..., :length, :]
            return 0
        drop = int((self.pos[0, : self.size] >= length).sum())
        if drop:
            first_sid = int(self.sid[0, self.size - drop : self.size].min())
            self.size -= drop
            # rebuild the touched sentences' vectors from the rows kept (same order of additions)
            self.ksum[:, first_sid:].zero_()
            self.kcount[:, first_sid:].zero_()
            keep = torch.nonzero(self.sid[0, : self.size] >= first_sid).view(-1)
            if keep.numel():
                self.add_sentence_keys(self.sid[0, keep].to(self.ksum.device), self.keys[:, keep].to(self.ksum.device))
        return drop

    # store helpers -------------------------------------------------------------------------------
    def kv_bytes(self) -> int:
        if self.keys is None:
            return 0
        if not self.compressed:
            return self.keys.numel() * self.keys.element_size() * 2
        h, _, d = self.keys.shape
        return self.size * h * d * self.keys.element_size() * 2

    def vector_bytes(self) -> int:
        if self.ksum is None:
            return 0
        return self.ksum.numel() * self.ksum.element_size() + self.kcount.numel() * 4

    def _ensure_capacity(self, extra: int) -> None:
        cap = self.keys.shape[1]
        if self.size + extra <= cap:
            return
        new_cap = max(self.size + extra, int(cap * 1.5) + 16)
        h, _, d = self.keys.shape

        def grow(t: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
            shape = (h, new_cap, d) if t.dim() == 3 else (h, new_cap)
            out = empty_store(shape, t.dtype, t.device, pinned=t.is_pinned() if t.device.type == "cpu" else False)
            out[:, : self.size] = t[:, : self.size]
            if t.dim() == 2:
                out[:, self.size :] = fill
            return out

        self.keys, self.values = grow(self.keys), grow(self.values)
        self.pos, self.sid = grow(self.pos, -1), grow(self.sid, -1)

    def _ensure_sentences(self, n_sent: int) -> None:
        s = self.ksum.shape[1]
        if n_sent <= s:
            return
        new_s = max(n_sent, int(s * 1.5) + 8)
        h, _, d = self.ksum.shape
        ksum = torch.zeros((h, new_s, d), dtype=self.ksum.dtype, device=self.ksum.device)
        kcount = torch.zeros((h, new_s), dtype=self.kcount.dtype, device=self.kcount.device)
        ksum[:, :s], kcount[:, :s] = self.ksum, self.kcount
        self.ksum, self.kcount = ksum, kcount

    def append_rows(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, sid: torch.Tensor) -> None:
        """Append ``[H, n, D]`` rows (same positions / sentences for every head)."""
        n = k.shape[1]
        self._ensure_capacity(n)
        sl = slice(self.size, self.size + n)
        self.keys[:, sl].copy_(k)  # blocking: the host may gather these rows right away
        self.values[:, sl].copy_(v)
        self.pos[:, sl] = pos.to(self.pos.device)
        self.sid[:, sl] = sid.to(self.sid.device)
        self.size += n

    def add_sentence_keys(self, sids: torch.Tensor, k: torch.Tensor) -> None:
        """Add keys ``[H, n, D]`` of sentences ``sids [n]`` to the sentence vectors."""
        self._ensure_sentences(int(sids.max()) + 1)
        idx = sids.to(self.ksum.device)
        self.ksum.index_add_(1, idx, k.to(self.ksum.device, torch.float32))
        self.kcount.index_add_(1, idx, torch.ones((k.shape[0], idx.numel()), device=self.ksum.device))
