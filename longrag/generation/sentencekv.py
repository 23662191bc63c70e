"""SentenceKV: a sentence-level semantic KV cache for long contexts (COLM 2025, arXiv 2504.00970).

How it plugs into transformers 5 (no fork of modeling code):

* :class:`SentenceKVCache` is a :class:`transformers.Cache` whose layers
  (:class:`SentenceKVLayer`) hold, after the prefill, only the retained KV pairs of the prompt,
  per layer and per KV head, with the sentence each token belongs to and its position.
* The attention function ``"sentencekv"`` is registered in transformers' ``AttentionInterface``
  (and ``sdpa``'s mask function under the same name). The model switches to it only inside
  :func:`sentencekv_attention`; when a forward call does not pass a SentenceKV cache in
  ``sentencekv=...`` it is exactly ``sdpa``.

Phases of one cache:

1. **Prefill** (one forward over the whole prompt, after :meth:`SentenceKVCache.begin_prefill`
   gave it the token ids): each layer's attention runs normally (SDPA, causal), then the layer
   is compressed at once, SnapKV style: the last ``window`` queries score every key, the scores
   are max-pooled (``kernel``) and each KV head keeps its ``r * tau`` best tokens plus the
   ``sink`` first and ``recent`` last ones. Everything else is dropped, so at most one layer's
   full KV exists at any time. The mean retained key of every sentence, per head, is kept.
   Prompts of at most ``tau + sink + recent`` tokens are not compressed (exact full KV).
2. **Append** (a forward with several tokens after the prefill, e.g. a question after a cached
   document): the new tokens attend to every retained token and causally to each other; they
   are stored and segmented into sentences too.
3. **Decode** (generated tokens): per layer, the mean query of the tokens generated so far
   in the current sentence scores every sentence vector per head; per KV head the best
   sentences are taken until ``tau`` tokens are filled; attention runs over those plus the
   sink, the recent tokens and the current sentence. Re-selected at every step; when a
   generated sentence ends it becomes a new bucket and the mean query restarts. A block of
   generated tokens in one forward (speculative verification, RAPID) is attended position by
   position exactly as if fed one at a time (the linear layers still run once on the block),
   and :meth:`SentenceKVCache.crop` takes generated tokens back (rejected drafts).

On CUDA the retained KV lives in pinned host memory, the sentence vectors on the GPU, and the
selected rows are gathered on the host and copied in on a side stream (K is copied while V is
gathered). That path is written but untested on this CPU-only machine; on CPU the same code
runs with the store in RAM.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from longrag.generation.decoding import common_prefix
from longrag.generation.fastkv import ATTN_NAME as FAST_ATTN, register_sdpa_like

log = logging.getLogger(__name__)

ATTN_NAME = "sentencekv"
SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})
_END_CHARS = (".", "!", "?", "。", "！", "？", "…")
_CLOSERS = " \t\"'”’)]»"


class SentenceKVError(ValueError):
    """A request SentenceKV cannot serve (batch > 1, unsupported model): use a full cache."""


@dataclass(frozen=True, slots=True)
class SentenceKVConfig:
    """Parameters of the method (defaults: the paper's, Llama-3.1-8B setting).

    Attributes:
        budget: tau, tokens selected by sentence ranking at each decode step (per KV head).
        retention_ratio: r; the prefill keeps ``r * tau`` tokens per KV head (paper: 2-3).
        sink: first tokens always attended.
        recent: last tokens always attended.
        window: observation window of the SnapKV-style prefill retention.
        kernel: max-pool kernel over the retention scores.
        max_sentence_tokens: longer sentences are split into pieces of this many tokens
            (not from the paper; it bounds a bucket so a single enormous sentence cannot
            swallow the budget).
    """

    budget: int = 1024
    retention_ratio: float = 2.0
    sink: int = 32
    recent: int = 32
    window: int = 32
    kernel: int = 7
    max_sentence_tokens: int = 64
    policy: str = "sentencekv"  # peers for the benchmark: "snapkv" (retention only), "streaming"
    retention: str = "token"  # "token": SnapKV top tokens per head (the paper); "sentence": whole sentences

    def __post_init__(self) -> None:
        if self.retention not in ("token", "sentence"):
            raise ValueError(f"unknown retention {self.retention!r}")
        if self.policy not in ("sentencekv", "snapkv", "streaming"):
            raise ValueError(f"unknown policy {self.policy!r}")
        if self.budget < 1 or self.retention_ratio < 1 or self.sink < 0 or self.recent < 1 or self.window < 1:
            raise ValueError(f"invalid SentenceKV parameters: {self}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("kernel must be a positive odd number")
        if self.max_sentence_tokens < 1:
            raise ValueError("max_sentence_tokens must be >= 1")

    @property
    def retained(self) -> int:
        return int(round(self.retention_ratio * self.budget))

    @property
    def full_kv_limit(self) -> int:
        """Prompts of at most this many tokens keep an exact full cache."""
        return self.budget + self.sink + self.recent

    @property
    def sentence_cap(self) -> int:
        return max(1, min(self.max_sentence_tokens, self.budget))


# -- sentence segmentation on token ids ---------------------------------------------------------
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


# -- per-layer store ----------------------------------------------------------------------------
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

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
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
            out = _empty(shape, t.dtype, t.device, pinned=t.is_pinned() if t.device.type == "cpu" else False)
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


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, pinned: bool) -> torch.Tensor:
    if pinned:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    return torch.empty(shape, dtype=dtype, device=device)


# -- the cache ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GenStep:
    """Where one generated token stands: its sentence, that sentence's first position, the number
    of sentences counting it, and whether it opens the sentence (the mean query restarts)."""

    sid: int
    start: int
    n_sentences: int
    opens: bool


@dataclass
class SelectionStats:
    """Where decode time goes (accumulated over steps, milliseconds)."""

    steps: int = 0
    rank_ms: float = 0.0  # sentence scoring + budget fill + row mask
    gather_ms: float = 0.0  # gathering (and on CUDA copying in) the selected rows
    attend_ms: float = 0.0  # attention over the selected rows
    selected_tokens: list[int] = field(default_factory=list)  # per step, mean over layers/heads


class SentenceKVCache(Cache):
    """The SentenceKV cache for one sequence (batch size 1) of a Llama-family decoder.

    Args:
        config: the model config (number of layers is read from it).
        skv: the method's parameters.
        boundaries: token ids that end a sentence (see :func:`boundary_token_ids`).
        offload: keep the retained KV in (pinned) host memory when the model runs on CUDA.
        timing: measure ranking / gather / attention time per decode step (synchronizes).
    """

    def __init__(self, config: Any, skv: SentenceKVConfig, boundaries: frozenset[int], *,
                 offload: bool = True, timing: bool = False) -> None:
        check_supported(config)
        n_layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[SentenceKVLayer() for _ in range(n_layers)])
        self.skv = skv
        self.boundaries = boundaries
        self.offload = offload
        self.timing = timing
        self.stats = SelectionStats()
        self.full = True  # no compression decided (yet)
        self.token_sid: list[int] = []  # sentence of each token seen (prompt + appended + generated)
        self.n_sentences = 0
        self.gen_sentence: int | None = None  # sentence id of the generated sentence in progress
        self.gen_len = 0
        self.gen_start = 0  # position of the open generated sentence's first token
        self.pinned_from = -1  # tokens at positions >= this are always attended (appended block)
        self._gen_pending: list[GenStep] | None = None  # the generated tokens of the next forward
        self.fixed_tokens = 0  # prompt + appended question: crop never goes below
        self._gen_log: list[tuple[int, int | None, int, int, int]] = []  # state before each generated token
        self._pending_ids: list[int] = []
        self._pending_sid: torch.Tensor | None = None
        self.prompt_tokens = 0
        self.peak_prefill_bytes = 0  # KV bytes held at the worst moment of the prefill
        self._copy_stream = None

    # -- driver API ------------------------------------------------------------------------------
    def begin_prefill(self, ids: Sequence[int]) -> None:
        """Announce the prompt (the next forward must be exactly these ids, in one call)."""
        if self.get_seq_length() != 0:
            raise SentenceKVError("begin_prefill on a cache that already holds tokens")
        sids = segment_sentences(ids, self.boundaries, self.skv.sentence_cap)
        self.token_sid = sids.tolist()
        self.n_sentences = int(sids[-1]) + 1 if sids.size else 0
        self.prompt_tokens = self.fixed_tokens = len(ids)
        self.full = len(ids) <= self.skv.full_kv_limit
        self._pending_ids = list(ids)
        self._pending_sid = torch.as_tensor(sids)

    def begin_append(self, ids: Sequence[int], *, generated: bool = False) -> None:
        """Announce the tokens of the next forward after the prefill (question or generated).

        Generated tokens may come several at a time (a draft being verified): each is attended
        as in its own decode step; a sentence they end closes after them.
        """
        self._gen_pending = None
        if not generated:
            self.fixed_tokens = self.get_seq_length() + len(ids)
        if self.full:
            self.token_sid.extend([-1] * len(ids))
            return
        if generated:
            pos = self.get_seq_length()
            steps = []
            for tok in ids:
                self._gen_log.append((pos, self.gen_sentence, self.gen_len, self.gen_start, self.n_sentences))
                opens = self.gen_sentence is None
                if opens:
                    self.gen_sentence, self.gen_start, self.gen_len = self.n_sentences, pos, 0
                    self.n_sentences += 1
                steps.append(GenStep(self.gen_sentence, self.gen_start, self.n_sentences, opens))
                self.gen_len += 1
                if int(tok) in self.boundaries or self.gen_len >= self.skv.sentence_cap:
                    self.gen_sentence = None
                pos += 1
            sid = [st.sid for st in steps]
            self._gen_pending = steps
        else:
            local = segment_sentences(ids, self.boundaries, self.skv.sentence_cap)
            sid = (local + self.n_sentences).tolist()
            self.n_sentences = sid[-1] + 1
            self.pinned_from = self.get_seq_length()
        self.token_sid.extend(sid)
        self._pending_ids = list(ids)
        self._pending_sid = torch.as_tensor(sid, dtype=torch.long)

    @torch.inference_mode()
    def crop(self, length: int) -> None:
        """Take back every token from position ``length`` on (generated tokens only: a rejected
        draft); the cache is then exactly as if they had never been fed."""
        if length >= self.get_seq_length():
            return
        if length < self.fixed_tokens:
            raise SentenceKVError(f"crop({length}) would cut into the prompt or question ({self.fixed_tokens} tokens)")
        log_at = next((i for i, e in enumerate(self._gen_log) if e[0] >= length), None)
        if not self.full:
            if log_at is None or self._gen_log[log_at][0] != length:
                raise SentenceKVError(f"crop({length}): only generated tokens can be taken back")
            _, self.gen_sentence, self.gen_len, self.gen_start, self.n_sentences = self._gen_log[log_at]
            del self._gen_log[log_at:]
        del self.token_sid[length:]
        for layer in self.layers:
            layer.crop(length)
            if self.gen_sentence is None:
                layer.qsum, layer.qn = None, 0
            else:  # the open sentence's mean query over the generated tokens kept
                qs = [q for p, q in layer.gen_q if p >= self.gen_start]
                layer.qsum = torch.stack(qs).sum(0) if qs else None
                layer.qn = len(qs)

    # -- accounting ------------------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """Bytes of KV pairs held now (retained store, or the full cache before compression)."""
        return sum(layer.kv_bytes() for layer in self.layers)

    def vector_bytes(self) -> int:
        return sum(layer.vector_bytes() for layer in self.layers)

    def full_kv_bytes(self, config: Any) -> int:
        """What a full cache of the same length would hold."""
        text = config.get_text_config(decoder=True)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        elt = torch.tensor([], dtype=self._dtype()).element_size()
        return self.get_seq_length() * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2 * elt

    def _dtype(self) -> torch.dtype:
        return getattr(self.layers[0], "dtype", torch.float32)

    # -- prefill compression (called by the attention function) ---------------------------------
    def _snap_keep(self, query: torch.Tensor, k: torch.Tensor, n_select: int) -> torch.Tensor:
        """SnapKV: rows ``[H, M]`` (sorted) kept per KV head: sink, recent, ``n_select`` best."""
        cfg = self.skv
        h, n, d = k.shape
        group = query.shape[1] // h
        w = min(cfg.window, n, query.shape[2])
        q = query[0, :, -w:, :].float()  # [Hq, w, D]
        kk = k.float().repeat_interleave(group, dim=0)  # [Hq, N, D]
        logits = torch.matmul(q, kk.transpose(1, 2)) / math.sqrt(d)  # [Hq, w, N]
        qpos = torch.arange(n - w, n, device=k.device)[:, None]
        logits = logits.masked_fill(torch.arange(n, device=k.device)[None, :] > qpos, float("-inf"))
        score = torch.softmax(logits, dim=-1).sum(1).view(h, group, n).sum(1)  # [H, N]
        score = F.max_pool1d(score[None], cfg.kernel, stride=1, padding=cfg.kernel // 2)[0]
        positions = torch.arange(n, device=k.device)
        always = (positions < cfg.sink) | (positions >= n - max(cfg.recent, w))
        n_keep = min(n_select, int((~always).sum()))
        if cfg.retention == "sentence":
            return self._sentence_keep(score, always, n_keep)
        score = score.masked_fill(always[None, :], float("inf"))
        return torch.topk(score, int(always.sum()) + n_keep, dim=1).indices.sort(dim=1).values

    def _sentence_keep(self, score: torch.Tensor, always: torch.Tensor, n_keep: int) -> torch.Tensor:
        """Whole-sentence retention (an option, not the paper's): sentences ranked by their best
        pooled token score summed over heads, kept until ``n_keep`` tokens; same rows per head."""
        h, n = score.shape
        sid = self._pending_sid.to(score.device)
        n_sent = int(sid.max()) + 1
        best = torch.full((h, n_sent), float("-inf"), device=score.device)
        best = best.scatter_reduce(1, sid[None].expand(h, n), score, reduce="amax").sum(0)  # [S]
        free = (~always).float()
        length = torch.zeros(n_sent, device=score.device).index_add_(0, sid, free)  # droppable tokens
        order = torch.argsort(best, descending=True)
        take = torch.cumsum(length[order], 0) <= n_keep
        chosen = torch.zeros(n_sent, dtype=torch.bool, device=score.device)
        chosen[order[take]] = True
        keep = torch.nonzero(always | chosen[sid]).view(-1)
        return keep[None].expand(h, -1)

    def compress_layer(self, layer_idx: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """SnapKV retention of a layer's prompt KV; builds its sentence vectors."""
        layer: SentenceKVLayer = self.layers[layer_idx]
        cfg = self.skv
        self.peak_prefill_bytes = max(self.peak_prefill_bytes, self.kv_bytes())
        k, v = keys[0], values[0]  # [H, N, D]
        h, n, d = k.shape
        if self._pending_sid is None or self._pending_sid.numel() != n:
            raise SentenceKVError("the prefill forward must be exactly the ids given to begin_prefill")
        positions = torch.arange(n, device=k.device)
        if cfg.policy == "streaming":
            keep = positions[(positions < cfg.sink) | (positions >= n - (cfg.budget + cfg.recent))]
            keep = keep[None].expand(h, -1)
        else:
            keep = self._snap_keep(query, k, cfg.retained if cfg.policy == "sentencekv" else cfg.budget)
        m = keep.shape[1]
        kept_k = torch.gather(k, 1, keep[..., None].expand(h, m, d))
        kept_v = torch.gather(v, 1, keep[..., None].expand(h, m, d))
        sid = self._pending_sid.to(k.device)[keep]  # [H, M]
        store_dev = torch.device("cpu") if (self.offload and k.device.type == "cuda") else k.device
        pinned = store_dev.type == "cpu" and k.device.type == "cuda"
        cap = m + 64
        layer.keys = _empty((h, cap, d), k.dtype, store_dev, pinned=pinned)
        layer.values = _empty((h, cap, d), v.dtype, store_dev, pinned=pinned)
        layer.pos = torch.full((h, cap), -1, dtype=torch.long, device=store_dev)
        layer.sid = torch.full((h, cap), -1, dtype=torch.long, device=store_dev)
        layer.keys[:, :m].copy_(kept_k)
        layer.values[:, :m].copy_(kept_v)
        layer.pos[:, :m] = keep.to(store_dev)
        layer.sid[:, :m] = sid.to(store_dev)
        layer.size = m
        n_sent = max(self.n_sentences, 1)
        layer.ksum = torch.zeros((h, n_sent, d), dtype=torch.float32, device=k.device)
        layer.kcount = torch.zeros((h, n_sent), dtype=torch.float32, device=k.device)
        layer.ksum.scatter_add_(1, sid[..., None].expand(h, m, d), kept_k.float())
        layer.kcount.scatter_add_(1, sid, torch.ones((h, m), device=k.device))
        layer.compressed = True

    # -- attention after compression ------------------------------------------------------------
    def attend_append(self, layer_idx: int, query: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                      scaling: float) -> torch.Tensor:
        """Several new tokens: attend to every retained row and causally to each other; store them."""
        layer: SentenceKVLayer = self.layers[layer_idx]
        t = k_new.shape[-2]
        dev = query.device
        ks = layer.keys[:, : layer.size].to(dev, non_blocking=True)
        vs = layer.values[:, : layer.size].to(dev, non_blocking=True)
        k_all = torch.cat([ks, k_new[0]], dim=1)[None]
        v_all = torch.cat([vs, v_new[0]], dim=1)[None]
        mask = torch.ones((t, layer.size + t), dtype=torch.bool, device=dev)
        mask[:, layer.size :] = torch.ones((t, t), dtype=torch.bool, device=dev).tril()
        out = F.scaled_dot_product_attention(query, k_all, v_all, attn_mask=mask, scale=scaling, enable_gqa=True)
        self._store_new(layer, k_new[0], v_new[0])
        return out

    def _store_new(self, layer: SentenceKVLayer, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new rows (all heads) and add them to their sentences' vectors."""
        t = k.shape[1]
        start = layer.seen - t
        sid = self._pending_sid
        layer.append_rows(k, v, torch.arange(start, start + t), sid)
        layer.add_sentence_keys(sid, k)

    def _sentence_rows(self, layer: SentenceKVLayer, qbar: torch.Tensor, store_pos: torch.Tensor,
                       total: int | torch.Tensor, step: GenStep | Sequence[GenStep] | None = None) -> torch.Tensor:
        """Rows ``[H, size]`` to attend: best sentences per head up to tau, plus the always-kept.

        For the ``T`` positions of a generated block: ``qbar [T, Hq, D]``, ``total [T]`` (each
        position + 1) and one :class:`GenStep` per position; returns ``[T, H, size]``, each
        position seeing what its own decode step would (later sentences and rows masked).
        ``step`` None: one position in the cache's current state.
        """
        cfg = self.skv
        single = qbar.dim() == 2
        steps = [step] if single else list(step)
        qbar = qbar[None] if single else qbar
        dev = store_pos.device
        totals = torch.as_tensor(total, device=dev).reshape(-1)
        states = [(self.n_sentences, self.gen_sentence, self.gen_start) if st is None
                  else (st.n_sentences, st.sid, st.start) for st in steps]
        t = qbar.shape[0]
        h, _, d = layer.ksum.shape
        n_max = max(n for n, _, _ in states)
        counts = layer.kcount[:, :n_max]
        # q_bar . mean(k) == (q_bar . sum(k)) / count: divides [T, H, S], not [T, H, S, D]
        score = torch.einsum("thgd,hsd->ths", qbar.view(t, h, -1, d), layer.ksum[:, :n_max]) / counts.clamp(min=1)
        sent = torch.arange(n_max, device=counts.device)[None, None, :]
        n_sent = torch.tensor([n for n, _, _ in states], device=counts.device)[:, None, None]
        open_sid = torch.tensor([-1 if o is None else o for _, o, _ in states], device=counts.device)[:, None, None]
        # not rankable: empty, not opened yet at that position, or the open sentence (attended anyway)
        blocked = (counts == 0)[None] | (sent >= n_sent) | (sent == open_sid)
        score = score.masked_fill(blocked, float("-inf"))
        order = torch.argsort(score, dim=-1, descending=True)
        sorted_counts = torch.gather(counts[None].expand(t, -1, -1).masked_fill(blocked, 0), -1, order)
        take_sorted = (torch.cumsum(sorted_counts, dim=-1) <= cfg.budget) & (sorted_counts > 0)
        chosen = torch.zeros_like(take_sorted).scatter_(-1, order, take_sorted)  # [T, H, S]
        store_sid = layer.sid[:, : layer.size].to(dev, non_blocking=True)
        # always attended: the sink, and every position from the earliest of the recent window,
        # the pinned (appended question) block and the open generated sentence
        tails = []
        for (_, o, start), tot in zip(states, totals.tolist()):
            tail = tot - cfg.recent
            if self.pinned_from >= 0:
                tail = min(tail, self.pinned_from)
            if o is not None:
                tail = min(tail, start)
            tails.append(tail)
        tail = torch.tensor(tails, device=dev)[:, None, None]
        pos = store_pos[None]
        rows = torch.gather(chosen, 2, store_sid[None].expand(t, -1, -1)) | (pos < cfg.sink) | (pos >= tail)
        rows &= pos < totals[:, None, None]  # a block position never sees the rows after it
        return rows[0] if single else rows

    def attend_generated(self, layer_idx: int, query: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                         scaling: float) -> torch.Tensor:
        """Generated tokens (one, or a draft being verified), each attended as in its own decode step:
        rank sentences with its sentence's mean query, attend to the chosen rows; the positions of a
        block are ranked, gathered and attended together."""
        steps = self._gen_pending
        t = k_new.shape[-2]
        if steps is None or len(steps) != t:
            raise SentenceKVError("generated tokens must be announced with begin_append(..., generated=True)")
        layer: SentenceKVLayer = self.layers[layer_idx]
        cfg = self.skv
        timing = self.timing
        t0 = time.perf_counter() if timing else 0.0
        self._store_new(layer, k_new[0], v_new[0])  # positions seen - t .. seen - 1, the steps' sentences
        first = layer.seen - t
        positions = torch.arange(first, first + t)
        dev = query.device
        q = query[0].float().transpose(0, 1)  # [T, Hq, D]
        qbars = []
        for i, st in enumerate(steps):
            layer.gen_q.append((first + i, q[i]))
            layer.qsum = q[i].clone() if (st.opens or layer.qsum is None) else layer.qsum + q[i]
            layer.qn = 1 if st.opens else layer.qn + 1
            qbars.append(layer.qsum / layer.qn)
        h = layer.ksum.shape[0]
        group = q.shape[1] // h
        store_pos = layer.pos[:, : layer.size].to(dev, non_blocking=True)
        totals = (positions + 1).to(dev)
        later = store_pos[None] >= totals[:, None, None]
        if cfg.policy == "sentencekv":
            row = self._sentence_rows(layer, torch.stack(qbars), store_pos, totals, steps)
        elif cfg.policy == "snapkv":
            row = (store_pos[None] >= 0) & ~later
        else:
            recent_from = (totals - (cfg.budget + cfg.recent))[:, None, None]
            row = ((store_pos[None] < cfg.sink) | (store_pos[None] >= recent_from)) & ~later
        n_rows = row.sum(dim=-1)  # [T, H]
        width = int(n_rows.max())
        idx = torch.argsort((~row).to(torch.int8), dim=-1, stable=True)[..., :width]  # selected rows first
        valid = torch.arange(width, device=dev)[None, None, :] < n_rows[..., None]  # [T, H, L]
        if timing:
            t1 = time.perf_counter()
            self.stats.rank_ms += (t1 - t0) * 1000
        kg, vg = self._gather(layer, idx, dev)  # [T, H, L, D]
        if timing:
            t2 = time.perf_counter()
            self.stats.gather_ms += (t2 - t1) * 1000
        mask = valid.repeat_interleave(group, dim=1)[:, :, None, :]  # [T, Hq, 1, L]
        out = F.scaled_dot_product_attention(query[0].transpose(0, 1)[:, :, None, :], kg, vg, attn_mask=mask,
                                             scale=scaling, enable_gqa=True)  # [T, Hq, 1, D]
        if timing:
            self.stats.attend_ms += (time.perf_counter() - t2) * 1000
            if layer_idx == 0:
                self.stats.steps += t
            self.stats.selected_tokens.extend(int(x) for x in n_rows.float().mean(dim=1))
        return out[:, :, 0, :].transpose(0, 1)[None]  # [1, Hq, T, D]

    def _gather(self, layer: SentenceKVLayer, idx: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx [..., H, w]`` of each head's store -> keys, values ``[..., H, w, D]``."""
        h = layer.keys.shape[0]
        d = layer.keys.shape[-1]
        cap = layer.keys.shape[1]
        shape = (*idx.shape, d)
        flat = (idx + torch.arange(h, device=idx.device)[:, None] * cap).reshape(-1)
        if layer.keys.device == dev:  # row gathers (index_select) are much cheaper than gather
            kg = layer.keys.view(h * cap, d).index_select(0, flat).view(shape)
            vg = layer.values.view(h * cap, d).index_select(0, flat).view(shape)
            return kg, vg
        # CUDA with the store in pinned host memory (untested here): gather on the host into
        # pinned buffers, copy K in on a side stream while V is gathered.
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device=dev)
        flat = flat.cpu()
        kh = torch.empty((flat.numel(), d), dtype=layer.keys.dtype, pin_memory=True)
        torch.index_select(layer.keys.view(h * cap, d), 0, flat, out=kh)
        with torch.cuda.stream(self._copy_stream):
            kg = kh.view(shape).to(dev, non_blocking=True)
        vh = torch.empty((flat.numel(), d), dtype=layer.values.dtype, pin_memory=True)
        torch.index_select(layer.values.view(h * cap, d), 0, flat, out=vh)
        vg = vh.view(shape).to(dev, non_blocking=True)
        torch.cuda.current_stream(dev).wait_stream(self._copy_stream)
        kg.record_stream(torch.cuda.current_stream(dev))
        return kg, vg

    # -- sharing a partial prefill (benchmarks) ------------------------------------------------
    def fork(self, skv: SentenceKVConfig | None = None) -> SentenceKVCache:
        """A cache sharing this one's uncompressed prompt prefix (same announced prompt).

        Lets several policies finish the same prefill without recomputing its first chunks;
        the prefix tensors are shared, never modified in place.
        """
        if any(layer.compressed for layer in self.layers):
            raise SentenceKVError("fork needs a cache that is not compressed yet")
        other = SentenceKVCache.__new__(SentenceKVCache)
        Cache.__init__(other, layers=[SentenceKVLayer() for _ in self.layers])
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("layers", "stats", "skv")})
        other.skv = skv or self.skv
        other.stats = SelectionStats()
        other.full = self.prompt_tokens <= other.skv.full_kv_limit
        other.token_sid = list(self.token_sid)
        for mine, theirs in zip(self.layers, other.layers):
            theirs.__dict__.update(mine.__dict__)
        return other

    def to_dynamic(self) -> Any:
        """The uncompressed prefix as a transformers ``DynamicCache`` (the full-KV peer)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in self.layers])

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of a compressed (or full) cache, for ``safetensors``."""
        tensors: dict[str, torch.Tensor] = {"token_sid": torch.as_tensor(self.token_sid, dtype=torch.long)}
        for i, layer in enumerate(self.layers):
            if layer.compressed:
                n = layer.size
                tensors |= {f"{i}.k": layer.keys[:, :n], f"{i}.v": layer.values[:, :n], f"{i}.pos": layer.pos[:, :n],
                            f"{i}.sid": layer.sid[:, :n], f"{i}.ksum": layer.ksum, f"{i}.kcount": layer.kcount}
            else:
                tensors |= {f"{i}.k": layer.keys[0], f"{i}.v": layer.values[0]}
        meta = {"skv": asdict(self.skv), "full": self.full, "n_sentences": self.n_sentences,
                "seen": self.get_seq_length(), "prompt_tokens": self.prompt_tokens}
        return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, meta

    @classmethod
    def from_state(cls, config: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   boundaries: frozenset[int], *, device: str | torch.device = "cpu", offload: bool = True,
                   timing: bool = False) -> SentenceKVCache:
        cache = cls(config, SentenceKVConfig(**meta["skv"]), boundaries, offload=offload, timing=timing)
        cache.full = bool(meta["full"])
        cache.n_sentences = int(meta["n_sentences"])
        cache.prompt_tokens = cache.fixed_tokens = int(meta["prompt_tokens"])
        cache.token_sid = tensors["token_sid"].tolist()
        device = torch.device(device)
        store_dev = torch.device("cpu") if (offload and device.type == "cuda") else device
        for i, layer in enumerate(cache.layers):
            k, v = tensors[f"{i}.k"], tensors[f"{i}.v"]
            layer.device, layer.dtype, layer.is_initialized = device, k.dtype, True
            layer.seen = int(meta["seen"])
            if cache.full:
                layer.keys, layer.values = k[None].to(device), v[None].to(device)
                continue
            layer.compressed = True
            layer.size = k.shape[1]
            pinned = store_dev.type == "cpu" and device.type == "cuda"
            layer.keys = _empty(tuple(k.shape), k.dtype, store_dev, pinned=pinned)
            layer.values = _empty(tuple(v.shape), v.dtype, store_dev, pinned=pinned)
            layer.keys.copy_(k)
            layer.values.copy_(v)
            layer.pos, layer.sid = tensors[f"{i}.pos"].to(store_dev), tensors[f"{i}.sid"].to(store_dev)
            layer.ksum, layer.kcount = tensors[f"{i}.ksum"].to(device), tensors[f"{i}.kcount"].to(device)
        return cache


def check_supported(config: Any) -> None:
    """Raise :class:`SentenceKVError` unless the model is a supported Llama-family decoder."""
    text = config.get_text_config(decoder=True)
    mt = getattr(text, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise SentenceKVError(f"SentenceKV supports model types {sorted(SUPPORTED_MODEL_TYPES)}, not {mt!r}")
    if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
        raise SentenceKVError("SentenceKV does not support sliding-window attention layers")


# -- the registered attention function ------------------------------------------------------
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


# -- driver: prefill / append / decode ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SKVResult:
    """Output of :func:`decode` (same fields as ``GenerationResult`` plus cache figures)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    ttft_ms: float
    total_ms: float
    tokens_per_s: float
    decode_ms_per_token: float
    kv_bytes: int
    kv_bytes_peak: int
    kv_bytes_full: int
    compressed: bool


def new_cache(model: Any, tokenizer: Any, skv: SentenceKVConfig, *, timing: bool = False,
              offload: bool = True) -> SentenceKVCache:
    """An empty cache for ``model`` (raises :class:`SentenceKVError` for unsupported models)."""
    return SentenceKVCache(model.config, skv, boundary_token_ids(tokenizer), offload=offload, timing=timing)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def prefill(model: Any, cache: SentenceKVCache, ids: Sequence[int], *, chunk: int | None = None) -> torch.Tensor:
    """Prefill the prompt; each layer is compressed right after its attention in the last chunk.

    With ``chunk=None`` the prompt goes in one forward, so at most one layer's full KV exists
    at a time; with chunks, the full KV of the earlier chunks is held until the last one.
    Returns the last position's logits ``[1, vocab]``.
    """
    if len(ids) == 0:
        raise SentenceKVError("empty prompt")
    cache.begin_prefill(ids)
    step = chunk or len(ids)
    logits = None
    for start in range(0, len(ids), step):
        logits = feed_prompt(model, cache, ids[start : start + step])
    return logits


@torch.inference_mode()
def feed_prompt(model: Any, cache: SentenceKVCache, ids: Sequence[int]) -> torch.Tensor:
    """One forward over a piece of the prompt announced by :meth:`SentenceKVCache.begin_prefill`."""
    x = torch.tensor([list(ids)], dtype=torch.long, device=_device(model))
    with sentencekv_attention(model):
        out = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1, sentencekv=cache)
    cache.peak_prefill_bytes = max(cache.peak_prefill_bytes, cache.kv_bytes())
    return out.logits[:, -1, :]


@torch.inference_mode()
def append(model: Any, cache: SentenceKVCache, ids: Sequence[int], *, generated: bool = False,
           keep: int = 1) -> torch.Tensor:
    """Feed more tokens (a question after a cached document, or generated tokens: one per decode
    step, or a draft to verify); return the logits of the last ``keep`` positions ``[keep, vocab]``."""
    if cache.get_seq_length() == 0:
        return prefill(model, cache, ids)
    cache.begin_append(ids, generated=generated)
    x = torch.tensor([list(ids)], dtype=torch.long, device=_device(model))
    try:
        with sentencekv_attention(model):
            out = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=keep, sentencekv=cache)
    finally:
        cache._gen_pending = None
    return out.logits[0]


class SentenceKVState:
    """A SentenceKV cache driven like :class:`longrag.generation.rapid.KVState` (a RAPID target).

    Holds the prompt (prefilled, or a cached document plus the appended question) and the
    generated tokens after it; :meth:`advance` feeds generated tokens (a draft) as one block,
    each attended as in its own decode step, and :meth:`crop` takes rejected ones back. So
    greedy speculative decoding on it gives exactly the tokens of :func:`decode`.

    Args:
        model: the decoder.
        cache: a cache holding ``tokens`` (its prompt part fixed).
        tokens: the ids the cache holds.
        last_logits: logits ``[vocab]`` after the last of ``tokens``.
    """

    def __init__(self, model: Any, cache: SentenceKVCache, tokens: Sequence[int], last_logits: torch.Tensor) -> None:
        if cache.get_seq_length() != len(tokens):
            raise SentenceKVError(f"the cache holds {cache.get_seq_length()} tokens, not {len(tokens)}")
        self.model = model
        self.cache = cache
        self.tokens = list(tokens)
        self._last: torch.Tensor | None = last_logits.reshape(-1).float()
        self._prompt = (len(self.tokens), self._last)  # cropping back to the prompt restores its logits

    @classmethod
    def from_prompt(cls, model: Any, tokenizer: Any, skv: SentenceKVConfig, ids: Sequence[int]) -> SentenceKVState:
        """Prefill ``ids`` into a new cache (question-aware retention, as :func:`generate`)."""
        cache = new_cache(model, tokenizer, skv)
        return cls(model, cache, ids, prefill(model, cache, ids)[-1])

    def crop(self, length: int) -> None:
        if length < len(self.tokens):
            self.cache.crop(length)
            del self.tokens[length:]
            self._last = self._prompt[1] if length == self._prompt[0] else None

    def prefill(self, seq: Sequence[int]) -> None:
        """Check that the cache holds ``seq`` (it was prefilled at construction); drop what follows."""
        if self.tokens[: len(seq)] != list(seq):
            raise SentenceKVError("this SentenceKV state holds another prompt")
        self.crop(len(seq))

    def feed(self, ids: Sequence[int], *, keep: int = 1) -> torch.Tensor:
        """Feed generated ``ids``; float logits of the last ``keep`` of them ``[keep, vocab]``."""
        keep = max(1, min(keep, len(ids)))
        logits = append(self.model, self.cache, [int(i) for i in ids], generated=True, keep=keep).float()
        self.tokens.extend(int(i) for i in ids)
        self._last = logits[-1]
        return logits

    def advance(self, seq: Sequence[int], *, extra: Sequence[int] = (), keep: int = 1) -> torch.Tensor:
        """Make the cache hold ``seq`` + ``extra``; logits of the last ``keep`` positions of them."""
        n = common_prefix(self.tokens, seq)
        if n == len(self.tokens) == len(seq) and self._last is not None:  # seq held: its logits are known
            if not extra:
                return self._last[None]
            head = self._last[None]
            rows = self.feed(extra, keep=min(keep, len(extra)))
            return torch.cat([head, rows]) if keep > len(extra) else rows
        self.crop(min(n, len(seq) - 1))
        return self.feed(list(seq[len(self.tokens) :]) + list(extra), keep=keep)


def decode(model: Any, tokenizer: Any, cache: SentenceKVCache, logits: torch.Tensor, *,
           max_new_tokens: int = 48, on_token: Any = None, t0: float | None = None,
           prompt_tokens: int = 0, kv_peak: int = 0) -> SKVResult:
    """Greedy decoding from the logits of the last prompt position, re-selecting every step."""
    from longrag.generation.decoding import decode_loop

    t0 = time.perf_counter() if t0 is None else t0
    peak = [kv_peak]

    def step(token: torch.Tensor) -> torch.Tensor:
        nxt = append(model, cache, [int(token.item())], generated=True)
        peak[0] = max(peak[0], cache.kv_bytes())
        return nxt

    res = decode_loop(logits, step, tokenizer, prompt_tokens=prompt_tokens, t0=t0,
                      max_new_tokens=max_new_tokens, on_token=on_token)
    per_tok = 1000 / res.tokens_per_s if res.tokens_per_s else 0.0
    return SKVResult(res.text, res.token_ids, prompt_tokens, res.ttft_ms, res.total_ms, res.tokens_per_s, per_tok,
                     cache.kv_bytes(), max(peak[0], cache.kv_bytes()), cache.full_kv_bytes(model.config),
                     not cache.full)


def generate(model: Any, tokenizer: Any, ids: Sequence[int], skv: SentenceKVConfig, *,
             max_new_tokens: int = 48, on_token: Any = None, timing: bool = False) -> tuple[SKVResult, SentenceKVCache]:
    """Prefill ``ids`` with SentenceKV (question-aware retention), then decode."""
    cache = new_cache(model, tokenizer, skv, timing=timing)
    t0 = time.perf_counter()
    logits = prefill(model, cache, ids)
    peak = cache.peak_prefill_bytes
    return decode(model, tokenizer, cache, logits, max_new_tokens=max_new_tokens, on_token=on_token, t0=t0,
                  prompt_tokens=len(ids), kv_peak=peak), cache
