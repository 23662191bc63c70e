"""The driver: prefill, append, decode, and a cache driven as a speculative-decoding target.

1. **Prefill** (:func:`prefill`, one forward over the whole prompt): each layer attends
   normally, then is compressed at once (the policy's retention), so at most one layer's full KV
   exists at any time. Prompts of at most ``tau + sink + recent`` tokens are not compressed
   (exact full KV).
2. **Append** (:func:`append` after the prefill, e.g. a question after a cached document): the
   new tokens attend to every retained token and causally to each other; they are stored,
   segmented into sentences and always attended.
3. **Decode** (:func:`decode`; generated tokens through :func:`append` with ``generated=True``):
   per layer, the mean query of the open generated sentence ranks the sentences and attention
   runs over the selected rows, re-selected at every step.

:class:`SentenceKVState` gives a cache the ``advance`` / ``crop`` interface of RAPID's
:class:`~longrag.generation.rapid.KVState`: a draft is fed as one block, each position attended
as in its own decode step, and rejected tokens are cropped back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from longrag.generation.decoding import TokenCallback, common_prefix, decode_loop
from longrag.generation.sentencekv.attention import sentencekv_attention
from longrag.generation.sentencekv.cache import SentenceKVCache
from longrag.generation.sentencekv.config import SentenceKVConfig, SentenceKVError
from longrag.generation.sentencekv.sentences import boundary_token_ids


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
           max_new_tokens: int = 48, on_token: TokenCallback | None = None, t0: float | None = None,
           prompt_tokens: int = 0, kv_peak: int = 0) -> SKVResult:
    """Greedy decoding from the logits of the last prompt position, re-selecting every step."""
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


def generate(model: Any, tokenizer: Any, ids: Sequence[int], skv: SentenceKVConfig, *, max_new_tokens: int = 48,
             on_token: TokenCallback | None = None, timing: bool = False) -> tuple[SKVResult, SentenceKVCache]:
    """Prefill ``ids`` with SentenceKV (question-aware retention), then decode."""
    cache = new_cache(model, tokenizer, skv, timing=timing)
    t0 = time.perf_counter()
    logits = prefill(model, cache, ids)
    peak = cache.peak_prefill_bytes
    return decode(model, tokenizer, cache, logits, max_new_tokens=max_new_tokens, on_token=on_token, t0=t0,
                  prompt_tokens=len(ids), kv_peak=peak), cache
