"""Per-document SentenceKV caches: prefill a document once, answer later questions from it.

The prompt is laid out document first, question after (``prompts.answer_messages`` already puts
the context before the question), so everything up to the end of the context is a prefix that
does not depend on the question. That prefix is prefilled with SentenceKV once (at the first
question, or at ingestion when ``LONGRAG_SENTENCEKV_AT_INGEST`` is set), its compressed state
is written to ``<data_dir>/kvcache/<doc_id>/<key>.safetensors``, and each question then only
appends its own tokens and decodes.

Note: a cached prefix is compressed without knowing the question (its SnapKV observation
window is the end of the document), whereas a one-off prefill of document + question lets the
question steer the retention. See docs/sentencekv.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longrag.config import Settings
from longrag.generation import sentencekv as skv
from longrag.generation.decoding import TokenCallback
from longrag.generation.prompts import answer_messages, chat_text, encode_halves

log = logging.getLogger(__name__)

_QUESTION_MARK = "\n\nQuestion: "


def skv_config(settings: Settings) -> skv.SentenceKVConfig:
    """The method's parameters from the settings (``LONGRAG_SENTENCEKV_*``)."""
    return skv.SentenceKVConfig(
        budget=settings.sentencekv.budget, retention_ratio=settings.sentencekv.ratio,
        sink=settings.sentencekv.sink, recent=settings.sentencekv.recent,
        max_sentence_tokens=settings.sentencekv.max_sentence, retention=settings.sentencekv.retention,
    )


def split_prompt(tokenizer: Any, question: str, context: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt split into (document prefix, question suffix)."""
    text = chat_text(tokenizer, answer_messages(question, context))
    cut = text.rfind(_QUESTION_MARK)
    if cut < 0:
        raise ValueError("the prompt template does not put the question after the context")
    return encode_halves(tokenizer, text, cut)


@dataclass(frozen=True, slots=True)
class KVPrompt:
    """A question's prompt held in a SentenceKV cache (document part stored or built, question appended)."""

    cache: skv.SentenceKVCache
    ids: list[int]  # the whole prompt
    logits: Any  # after its last token, [1, vocab]
    reused: bool  # the document prefix came from a stored cache
    prefix_ms: float  # time to build or load the document prefix
    t0: float  # perf_counter when preparation began

    def state(self, model: Any) -> skv.SentenceKVState:
        """The prompt as a speculative-decoding target (longrag.generation.rapid)."""
        return skv.SentenceKVState(model, self.cache, self.ids, self.logits[-1])


@dataclass(frozen=True, slots=True)
class KVRun:
    """A SentenceKV answer and what the cache did."""

    result: skv.SKVResult
    reused: bool  # the document prefix came from a stored cache
    prefix_ms: float  # time to build or load the document prefix
    stats: dict[str, Any]


class DocumentKVCache:
    """Builds, stores and reloads the compressed SentenceKV state of document windows."""

    def __init__(self, settings: Settings, decoder: Any) -> None:
        self.settings = settings
        self.decoder = decoder
        self.config = skv_config(settings)
        self.root = settings.data_dir / "kvcache"

    def key(self, doc_id: str, span: tuple[int, int], prefix_ids: list[int]) -> str:
        blob = json.dumps([self.decoder.name, asdict(self.config), doc_id, list(span), len(prefix_ids),
                           hashlib.sha256(str(prefix_ids).encode()).hexdigest()])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, doc_id: str, key: str) -> Path:
        return self.root / doc_id / f"{key}.safetensors"

    def drop(self, doc_id: str) -> None:
        """Remove every stored cache of a document."""
        shutil.rmtree(self.root / doc_id, ignore_errors=True)

    def build(self, doc_id: str, span: tuple[int, int], prefix_ids: list[int]) -> skv.SentenceKVCache:
        """Prefill the document prefix (compressing it) and, if enabled, persist it."""
        dec = self.decoder
        cache = skv.new_cache(dec.model, dec.tokenizer, self.config)
        skv.prefill(dec.model, cache, prefix_ids)
        if self.settings.sentencekv.doc_cache:
            from safetensors.torch import save_file

            tensors, meta = cache.state_dict()
            p = self.path(doc_id, self.key(doc_id, span, prefix_ids))
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta), "peak": str(cache.peak_prefill_bytes)})
            tmp.replace(p)
        return cache

    def load(self, doc_id: str, span: tuple[int, int], prefix_ids: list[int]) -> skv.SentenceKVCache | None:
        p = self.path(doc_id, self.key(doc_id, span, prefix_ids))
        if not p.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = json.loads(f.metadata()["meta"])
                peak = int(f.metadata().get("peak", 0))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a torn or foreign file: rebuild it
            log.warning("ignoring unreadable KV cache %s: %s", p, exc)
            return None
        dec = self.decoder
        cache = skv.SentenceKVCache.from_state(dec.model.config, tensors, meta,
                                               skv.boundary_token_ids(dec.tokenizer), device=dec.device)
        cache.peak_prefill_bytes = peak
        return cache

    def prepare(self, doc_id: str, span: tuple[int, int], context: str, question: str) -> KVPrompt:
        """The prompt for ``question`` over ``context`` (the document window ``span``) in a
        SentenceKV cache: the document prefix reloaded (or built and stored), the question appended."""
        dec = self.decoder
        prefix, suffix = split_prompt(dec.tokenizer, question, context)
        t0 = time.perf_counter()
        cache = self.load(doc_id, span, prefix) if self.settings.sentencekv.doc_cache else None
        reused = cache is not None
        if cache is None:
            cache = self.build(doc_id, span, prefix)
        prefix_ms = (time.perf_counter() - t0) * 1000
        logits = skv.append(dec.model, cache, suffix)
        return KVPrompt(cache, prefix + suffix, logits, reused, prefix_ms, t0)

    def stats(self, prompt: KVPrompt, kv_bytes_peak: int) -> dict[str, Any]:
        """The ``kv_*`` answer statistics of a prepared prompt after decoding."""
        cache = prompt.cache
        return {
            "kv": "sentencekv",
            "kv_bytes": cache.kv_bytes(),
            "kv_bytes_peak": max(kv_bytes_peak, cache.kv_bytes()),
            "kv_bytes_full": cache.full_kv_bytes(self.decoder.model.config),
            "kv_vector_bytes": cache.vector_bytes(),
            "kv_budget": self.config.budget,
            "kv_retained": self.config.retained,
            "kv_compressed": not cache.full,
            "kv_cache_reused": prompt.reused,
            "kv_prefix_ms": round(prompt.prefix_ms, 2),
        }

    def answer(self, doc_id: str, span: tuple[int, int], context: str, question: str, *,
               max_new_tokens: int, on_token: TokenCallback | None = None) -> KVRun:
        """Answer ``question`` over ``context`` (the document window ``span``), reusing its cache."""
        dec = self.decoder
        prompt = self.prepare(doc_id, span, context, question)
        res = skv.decode(dec.model, dec.tokenizer, prompt.cache, prompt.logits, max_new_tokens=max_new_tokens,
                         on_token=on_token, t0=prompt.t0, prompt_tokens=len(prompt.ids),
                         kv_peak=prompt.cache.peak_prefill_bytes)
        return KVRun(res, prompt.reused, prompt.prefix_ms, self.stats(prompt, res.kv_bytes_peak))


def ingest_hook(corpus: Any, doc_id: str, units: Any) -> None:
    """``Corpus.ingest_hooks`` entry: build the first window's cache of a long document.

    Does nothing unless ``LONGRAG_SENTENCEKV_AT_INGEST`` is set. Questions whose window is the
    same (every question, for a document that fits the decoder's window) then reuse it.
    """
    settings = corpus.settings
    if not settings.sentencekv.at_ingest:
        return
    from longrag.models.registry import load_decoder

    dec = load_decoder(settings.decoder)
    text = units.text
    budget = context_window_tokens(settings, dec)
    span = doc_window(dec.tokenizer, text, budget, anchor_char=0)
    if span.tokens < settings.sentencekv.min_context:
        return
    prefix, _ = split_prompt(dec.tokenizer, "?", text[span.start : span.end])
    cache = DocumentKVCache(settings, dec)
    if cache.load(doc_id, (span.start, span.end), prefix) is None:
        cache.build(doc_id, (span.start, span.end), prefix)


@dataclass(frozen=True, slots=True)
class Window:
    start: int  # chars
    end: int
    tokens: int  # context tokens in the window
    document_tokens: int


def context_window_tokens(settings: Settings, decoder: Any, reserve: int = 160) -> int:
    window = min(settings.full_context_tokens or decoder.context_window, decoder.context_window)
    return max(64, window - settings.max_new_tokens - reserve)


def doc_window(tokenizer: Any, text: str, budget: int, *, anchor_char: int) -> Window:
    """The document window of at most ``budget`` tokens around ``anchor_char``.

    Starts are aligned to multiples of ``budget // 4`` tokens so that questions anchored near
    each other share a window (and its cache).
    """
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n = len(offsets)
    if n <= budget:
        return Window(0, len(text), n, n)
    centre = next((i for i, (a, _) in enumerate(offsets) if a >= anchor_char), 0)
    step = max(1, budget // 4)
    first = max(0, min(centre - budget // 2, n - budget))
    first = min((first // step) * step, n - budget)
    return Window(offsets[first][0], offsets[first + budget - 1][1], budget, n)
