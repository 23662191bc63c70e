"""The SentenceKV cache of one sequence: bookkeeping, prefill compression, attention, persistence.

:class:`SentenceKVCache` is a :class:`transformers.Cache` whose layers
(:class:`~longrag.generation.sentencekv.store.SentenceKVLayer`) hold, after the prefill, only the
retained KV rows of the prompt, per layer and per KV head. The registered attention function
(:mod:`.attention`) calls back into it: :meth:`~SentenceKVCache.compress_layer` right after a
layer's prefill attention, :meth:`~SentenceKVCache.attend_append` for tokens appended after the
prefill (a question after a cached document), :meth:`~SentenceKVCache.attend_generated` for
generated tokens. Which rows are kept and attended is the configured policy's choice
(:mod:`.selection`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from longrag.generation.sentencekv.config import SentenceKVConfig, SentenceKVError, check_supported
from longrag.generation.sentencekv.offload import RowGather, empty_store, store_placement
from longrag.generation.sentencekv.selection import POLICIES
from longrag.generation.sentencekv.sentences import GenStep, segment_sentences
from longrag.generation.sentencekv.store import SentenceKVLayer


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
        self._gather = RowGather()

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
    def compress_layer(self, layer_idx: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Retention of a layer's prompt KV (the policy's rows); builds its sentence vectors."""
        layer: SentenceKVLayer = self.layers[layer_idx]
        cfg = self.skv
        self.peak_prefill_bytes = max(self.peak_prefill_bytes, self.kv_bytes())
        k, v = keys[0], values[0]  # [H, N, D]
        h, n, d = k.shape
        if self._pending_sid is None or self._pending_sid.numel() != n:
            raise SentenceKVError("the prefill forward must be exactly the ids given to begin_prefill")
        keep = POLICIES[cfg.policy].retain(cfg, query, k, self._pending_sid)
        m = keep.shape[1]
        kept_k = torch.gather(k, 1, keep[..., None].expand(h, m, d))
        kept_v = torch.gather(v, 1, keep[..., None].expand(h, m, d))
        sid = self._pending_sid.to(k.device)[keep]  # [H, M]
        store_dev, pinned = store_placement(k.device, offload=self.offload)
        cap = m + 64
        layer.keys = empty_store((h, cap, d), k.dtype, store_dev, pinned=pinned)
        layer.values = empty_store((h, cap, d), v.dtype, store_dev, pinned=pinned)
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
        row = POLICIES[cfg.policy].attend(self, layer, torch.stack(qbars), store_pos, totals, steps)
        n_rows = row.sum(dim=-1)  # [T, H]
        width = int(n_rows.max())
        idx = torch.argsort((~row).to(torch.int8), dim=-1, stable=True)[..., :width]  # selected rows first
        valid = torch.arange(width, device=dev)[None, None, :] < n_rows[..., None]  # [T, H, L]
        if timing:
            t1 = time.perf_counter()
            self.stats.rank_ms += (t1 - t0) * 1000
        kg, vg = self._gather(layer.keys, layer.values, idx, dev)  # [T, H, L, D]
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
        store_dev, pinned = store_placement(device, offload=offload)
        for i, layer in enumerate(cache.layers):
            k, v = tensors[f"{i}.k"], tensors[f"{i}.v"]
            layer.device, layer.dtype, layer.is_initialized = device, k.dtype, True
            layer.seen = int(meta["seen"])
            if cache.full:
                layer.keys, layer.values = k[None].to(device), v[None].to(device)
                continue
            layer.compressed = True
            layer.size = k.shape[1]
            layer.keys = empty_store(tuple(k.shape), k.dtype, store_dev, pinned=pinned)
            layer.values = empty_store(tuple(v.shape), v.dtype, store_dev, pinned=pinned)
            layer.keys.copy_(k)
            layer.values.copy_(v)
            layer.pos, layer.sid = tensors[f"{i}.pos"].to(store_dev), tensors[f"{i}.sid"].to(store_dev)
            layer.ksum, layer.kcount = tensors[f"{i}.ksum"].to(device), tensors[f"{i}.kcount"].to(device)
        return cache
