"""Which KV rows are kept at the prefill and which rows each generated token attends.

* **Prefill retention** (:func:`snap_keep`, SnapKV style): the last ``window`` queries score
  every key, the scores are max-pooled (``kernel``) and each KV head keeps its ``n_select`` best
  tokens plus the ``sink`` first and the last ``max(recent, window)`` ones. With
  ``retention="sentence"`` (:func:`sentence_keep`) whole sentences are kept instead, the same
  rows for every head.
* **Decode selection** (:func:`sentence_rows`): the mean query of the open generated sentence
  scores every sentence's mean key per KV head; the best sentences are taken until ``tau``
  tokens are filled, plus the sink, the recent tokens, the pinned (appended) block and the open
  sentence.

A :class:`SelectionPolicy` bundles one rule of each kind; the cache looks its policy up by
:attr:`SentenceKVConfig.policy <longrag.generation.sentencekv.config.SentenceKVConfig.policy>`
in :data:`POLICIES`, which holds the method itself (``"sentencekv"``: ``r * tau`` retained
tokens, sentence ranking at decode). Other policies, run on the same store, are added with
:func:`register_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from longrag.generation.sentencekv.sentences import GenStep

if TYPE_CHECKING:
    from longrag.generation.sentencekv.cache import SentenceKVCache
    from longrag.generation.sentencekv.config import SentenceKVConfig
    from longrag.generation.sentencekv.store import SentenceKVLayer


# -- prefill retention ------------------------------------------------------------------------
def snap_keep(cfg: SentenceKVConfig, query: torch.Tensor, k: torch.Tensor, n_select: int,
              sid: torch.Tensor) -> torch.Tensor:
    """SnapKV: rows ``[H, M]`` (sorted) kept per KV head: sink, recent, ``n_select`` best.

    Args:
        cfg: the method's parameters (``window``, ``kernel``, ``sink``, ``recent``, ``retention``).
        query: the layer's prompt queries ``[1, Hq, N, D]``.
        k: the layer's prompt keys ``[H, N, D]``.
        n_select: tokens kept per head besides the sink and the recent window.
        sid: the sentence of each prompt token ``[N]`` (whole-sentence retention).
    """
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
        return sentence_keep(score, always, n_keep, sid)
    score = score.masked_fill(always[None, :], float("inf"))
    return torch.topk(score, int(always.sum()) + n_keep, dim=1).indices.sort(dim=1).values


def sentence_keep(score: torch.Tensor, always: torch.Tensor, n_keep: int, sid: torch.Tensor) -> torch.Tensor:
    """Whole-sentence retention (an option, not the paper's): sentences ranked by their best
    pooled token score summed over heads, kept until ``n_keep`` tokens; same rows per head."""
    h, n = score.shape
    sid = sid.to(score.device)
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


# -- decode selection -------------------------------------------------------------------------
def sentence_rows(cache: SentenceKVCache, layer: SentenceKVLayer, qbar: torch.Tensor, store_pos: torch.Tensor,
                  total: int | torch.Tensor, step: GenStep | Sequence[GenStep] | None = None) -> torch.Tensor:
    """Rows ``[H, size]`` of ``layer``'s store to attend: best sentences per head up to tau, plus
    the always-kept.

    For the ``T`` positions of a generated block: ``qbar [T, Hq, D]``, ``total [T]`` (each
    position + 1) and one :class:`GenStep` per position; returns ``[T, H, size]``, each
    position seeing what its own decode step would (later sentences and rows masked).
    ``step`` None: one position in the cache's current state.
    """
    cfg = cache.skv
    single = qbar.dim() == 2
    steps = [step] if single else list(step)
    qbar = qbar[None] if single else qbar
    dev = store_pos.device
    totals = torch.as_tensor(total, device=dev).reshape(-1)
    states = [(cache.n_sentences, cache.gen_sentence, cache.gen_start) if st is None
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
        if cache.pinned_from >= 0:
            tail = min(tail, cache.pinned_from)
        if o is not None:
            tail = min(tail, start)
        tails.append(tail)
    tail = torch.tensor(tails, device=dev)[:, None, None]
    pos = store_pos[None]
    rows = torch.gather(chosen, 2, store_sid[None].expand(t, -1, -1)) | (pos < cfg.sink) | (pos >= tail)
    rows &= pos < totals[:, None, None]  # a block position never sees the rows after it
    return rows[0] if single else rows


# -- policies ---------------------------------------------------------------------------------
class SelectionPolicy(Protocol):
    """A retention rule for the prefill and a selection rule for generated tokens."""

    def retain(self, cfg: SentenceKVConfig, query: torch.Tensor, k: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
        """Prompt rows ``[H, M]`` (sorted, the same ``M`` for every KV head) a layer keeps.

        ``query [1, Hq, N, D]`` and ``k [H, N, D]`` are the layer's prompt queries and keys,
        ``sid [N]`` the prompt tokens' sentences.
        """
        ...

    def attend(self, cache: SentenceKVCache, layer: SentenceKVLayer, qbar: torch.Tensor, store_pos: torch.Tensor,
               totals: torch.Tensor, steps: Sequence[GenStep]) -> torch.Tensor:
        """Rows ``[T, H, size]`` of ``layer``'s store each of ``T`` generated positions attends.

        ``qbar [T, Hq, D]``: each position's mean query of its open sentence; ``store_pos
        [H, size]``: the rows' positions; ``totals [T]``: each position + 1 (no position may
        see a row at or after its own total).
        """
        ...


class SentenceRanking:
    """The method: ``r * tau`` tokens retained per head, sentence ranking at every decode step."""

    def retain(self, cfg: SentenceKVConfig, query: torch.Tensor, k: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
        return snap_keep(cfg, query, k, cfg.retained, sid)

    def attend(self, cache: SentenceKVCache, layer: SentenceKVLayer, qbar: torch.Tensor, store_pos: torch.Tensor,
               totals: torch.Tensor, steps: Sequence[GenStep]) -> torch.Tensor:
        return sentence_rows(cache, layer, qbar, store_pos, totals, steps)


POLICIES: dict[str, SelectionPolicy] = {"sentencekv": SentenceRanking()}
"""Selection policies by name (:attr:`SentenceKVConfig.policy`)."""


def register_policy(name: str, policy: SelectionPolicy) -> None:
    """Make ``policy`` selectable as ``SentenceKVConfig(policy=name)``."""
    if name in POLICIES and type(POLICIES[name]) is not type(policy):
        raise ValueError(f"a different policy is already registered as {name!r}")
    POLICIES[name] = policy
