"""QA mode ``rapid``: the target reads the full document window, a drafter the retrieved part.

RAPID (retrieval-augmented speculative decoding, docs/rapid.md). The target decoder's prompt
is the same long context as the ``full`` mode (the document, up to the decoder's window,
centred on the best hit); the drafter's prompt holds only the ~512-token chunks of that
window that retrieval ranks best (budget ``max(budget, s / 24)``), in document order. The
drafter proposes up to ``gamma`` tokens, the target verifies them in one pass.

Options (``Question.options``, else settings ``LONGRAG_RAPID_*``): ``gamma``, ``eta``, ``tail``,
``consensus`` and ``residual`` (true / false), ``temperature``, ``drafter`` (``llm`` | ``hybrid`` | ``ngram``), ``budget_tokens``,
``threshold``, ``min_confidence``, ``drafter_weights`` (``fp16`` | ``bf16`` | ``fp32``: the
drafter's one-token steps on half-precision linear weights, generation/precision.py).

``Question.kv``: ``full`` | ``sentencekv`` | None (SentenceKV when the target's context is longer
than ``LONGRAG_SENTENCEKV_MIN_CONTEXT``, as in the ``full`` mode). With SentenceKV the target's
prompt comes from the document's stored SentenceKV cache (services/kvcache.py) and each draft is
verified position by position as SentenceKV decodes (greedy output = SentenceKV's own).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from longrag.config import Settings
from longrag.errors import InvalidRequestError
from longrag.generation.decoding import TokenCallback
from longrag.generation.precision import WEIGHTS, weights_of
from longrag.generation.prompts import answer_messages, encode_chat
from longrag.generation.rapid import (
    DraftLength,
    HybridDrafter,
    KVState,
    LearntLengths,
    LMDrafter,
    NgramDrafter,
    RapidConfig,
    RetrievedContext,
    TokenChunk,
    check_same_tokenizer,
    rapid_generate,
    retrieve_context,
)
from longrag.generation.sentencekv import SentenceKVError
from longrag.retrieval.types import Hit
from longrag.services.corpus import DENSE_RETRIEVERS, Corpus
from longrag.services.kvcache import DocumentKVCache, context_window_tokens, doc_window
from longrag.services.qa import Answer, QAPipeline, Question, ground, register_mode

log = logging.getLogger(__name__)

DRAFTERS = ("llm", "hybrid", "ngram")  # = the choices of Settings.rapid.drafter_kind (the question's option too)

LEARNT = LearntLengths()  # this process's carried estimates (LONGRAG_RAPID_WARM_START)


def load_drafter(pipe: QAPipeline, weights: str = "fp32") -> Any:
    """The drafter decoder: the target's own weights unless ``LONGRAG_RAPID_DRAFTER`` names another;
    with ``weights`` fp16 / bf16 its half-precision-weight twin (registry, built once per process).

    Raises:
        InvalidRequestError: unknown ``weights``, or the drafter's tokenizer differs from the target's.
    """
    from longrag.models.registry import load_decoder

    if weights not in WEIGHTS:
        raise InvalidRequestError(f"unknown drafter weights {weights!r}; choose from {list(WEIGHTS)}")
    name = pipe.settings.rapid.drafter
    if not name or name == pipe.decoder_name:
        return load_decoder(pipe.decoder_name, weights=weights) if weights != "fp32" else pipe.decoder
    drafter = load_decoder(name, weights=weights)
    try:
        check_same_tokenizer(pipe.decoder.tokenizer, drafter.tokenizer)
    except ValueError as exc:
        raise InvalidRequestError(f"rapid drafter {name!r} cannot draft for {pipe.decoder_name!r}: {exc}") from exc
    return drafter


def chunk_hits(corpus: Corpus, question: str, doc_id: str,
               retriever: str | None = None) -> tuple[list[Hit], list[Hit] | None]:
    """Every chunk of ``doc_id`` ranked for ``question``: ``(ranked, dense)``.

    ``ranked`` comes from ``retriever`` (None: the configured one, hybrid by default) and orders
    the drafter's chunks; ``dense`` holds the same chunks with their dense cosines, which the
    threshold applies to (the paper's similarity threshold): a fused or BM25 score has no absolute
    scale (a reciprocal-rank fusion never exceeds ~0.033). ``dense`` is None when the retriever is
    dense.
    """
    retriever = retriever or corpus.settings.retriever
    n = max(1, len(corpus.store.chunk_ids_for([doc_id])))
    ranked = corpus.search(question, k=n, doc_ids=[doc_id], retriever=retriever)
    if retriever in DENSE_RETRIEVERS:
        return ranked, None
    return ranked, corpus.search(question, k=n, doc_ids=[doc_id], retriever="situated")


def overlap_scorer(hits: list[Hit], offset: int):
    """Chunk scores from retrieval hits: the best hit overlapping each chunk (-1 when none).

    ``offset`` is the character where the target's window starts in the document.
    """

    def score(chunks: list[TokenChunk]) -> list[float]:
        out = []
        for c in chunks:
            a, b = c.start + offset, c.end + offset
            s = [h.score for h in hits if h.start < b and h.end > a]
            out.append(max(s) if s else -1.0)
        return out

    return score


def _window(pipe: QAPipeline, q: Question, text: str, anchor_char: int) -> tuple[int, int, int, int]:
    """The full mode's window: ``(start_char, end_char, window_tokens, document_tokens)``."""
    tok = pipe.decoder.tokenizer
    budget = pipe.context_budget(q)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= budget:
        return 0, len(text), len(offsets), len(offsets)
    centre = next((i for i, (a, _) in enumerate(offsets) if a >= anchor_char), 0)
    first = max(0, min(centre - budget // 2, len(offsets) - budget))
    return offsets[first][0], offsets[first + budget - 1][1], budget, len(offsets)


def rapid_config(s: Settings, q: Question) -> RapidConfig:
    """The speculative loop's parameters: ``q``'s options over the settings ``s`` (``LONGRAG_RAPID_*``).

    Raises:
        InvalidRequestError: an option of ``q`` out of range (``gamma <= 0``, ``eta < 0``, ...).
    """
    try:
        return RapidConfig(
            gamma=q.option("gamma", s.rapid.gamma, int),
            eta=q.option("eta", s.rapid.eta, float),
            temperature=q.option("temperature", s.rapid.temperature, float),
            tail=q.option("tail", s.rapid.tail, float),
            consensus=q.option("consensus", s.rapid.consensus, bool),
            residual=q.option("residual", s.rapid.residual, bool),
            max_new_tokens=q.max_new_tokens or s.max_new_tokens,
        )
    except ValueError as exc:
        raise InvalidRequestError(f"rapid: {exc}") from exc


@register_mode("rapid", options=("gamma", "eta", "tail", "consensus", "residual", "temperature", "drafter", "drafter_weights",
                               "budget_tokens", "threshold", "min_confidence"))
def rapid_mode(pipe: QAPipeline, q: Question, on_token: TokenCallback | None) -> Answer:
    """Long-context target + retrieval-context drafter, speculative decoding."""
    t0 = time.perf_counter()
    s = pipe.settings
    if q.kv not in (None, "full", "sentencekv"):
        raise InvalidRequestError(f"unknown kv {q.kv!r}; choose from ['full', 'sentencekv']")
    drafter_kind = q.option("drafter", s.rapid.drafter_kind, str)
    if drafter_kind not in DRAFTERS:
        raise InvalidRequestError(f"unknown drafter {drafter_kind!r}; choose from {list(DRAFTERS)}")
    weights = q.option("drafter_weights", s.rapid.drafter_weights, str)
    if weights not in WEIGHTS:
        raise InvalidRequestError(f"unknown drafter weights {weights!r}; choose from {list(WEIGHTS)}")
    config = rapid_config(s, q)
    budget_tokens = q.option("budget_tokens", s.rapid.budget_tokens, int)
    threshold = q.option("threshold", s.rapid.threshold, float)
    min_conf = q.option("min_confidence", s.rapid.min_confidence, float)

    hits, r_ms = pipe.retrieve(q)
    if not hits:
        raise InvalidRequestError("no passages found for the question")
    doc_id = q.doc_ids[0] if q.doc_ids and len(q.doc_ids) == 1 else hits[0].doc_id
    text = pipe.corpus.text(doc_id)
    anchor = next((h.start for h in hits if h.doc_id == doc_id), 0)
    start, end, window_tokens, doc_tokens = _window(pipe, q, text, anchor)
    kv = q.kv or ("sentencekv" if window_tokens > s.sentencekv.min_context else "full")
    if kv == "sentencekv" and (start, end) != (0, len(text)):  # the window the document's stored caches use
        w = doc_window(pipe.decoder.tokenizer, text, context_window_tokens(s, pipe.decoder), anchor_char=anchor)
        start, end, window_tokens = w.start, w.end, w.tokens
    context = text[start:end]

    # Retrieval over the window's own 512-token chunks, ranked by the question's (else the
    # configured) retriever, the threshold on their dense cosines.
    t1 = time.perf_counter()
    doc_hits, dense_hits = chunk_hits(pipe.corpus, q.text, doc_id, q.retriever)
    target = pipe.decoder
    drafter_dec = load_drafter(pipe, weights) if drafter_kind != "ngram" else target  # n-gram drafting needs no LLM
    retrieved: RetrievedContext = retrieve_context(
        context, target.tokenizer, overlap_scorer(doc_hits, start),
        chunk_tokens=s.rapid.chunk_tokens, budget_tokens=budget_tokens, threshold=threshold,
        relevance=None if dense_hits is None else overlap_scorer(dense_hits, start),
    )
    r_ms += (time.perf_counter() - t1) * 1000

    target_ids = encode_chat(target.tokenizer, answer_messages(q.text, context))
    state: Any = KVState(target.model)
    kv_stats: dict[str, Any] = {"kv": "full"}
    prep_ms = 0.0
    if kv == "sentencekv":
        store = DocumentKVCache(s, target)
        try:
            prompt = store.prepare(doc_id, (start, end), context, q.text)
        except SentenceKVError as exc:
            if q.kv == "sentencekv":
                raise InvalidRequestError(f"SentenceKV cannot serve this request: {exc}") from exc
            kv_stats["kv_fallback"] = str(exc)
            log.info("rapid: SentenceKV not used (%s); full KV cache", exc)
        else:
            state, target_ids = prompt.state(target.model), prompt.ids
            prep_ms = (time.perf_counter() - prompt.t0) * 1000
    drafter = None
    draft_ids: list[int] = []
    if not retrieved.empty:
        draft_ids = encode_chat(target.tokenizer, answer_messages(q.text, retrieved.text))
        if drafter_kind == "llm":
            drafter = LMDrafter(drafter_dec.model, draft_ids, min_confidence=min_conf)
        else:  # the n-gram index is built only for the kinds that look n-grams up
            learnt = LEARNT if s.rapid.warm_start else LearntLengths()
            keys = {kind: (target.name, drafter_dec.name, weights, drafter_kind, kind, len(target_ids).bit_length())
                    for kind in ("ngram", "llm")}
            length = llm_length = None
            if s.rapid.draft_length == "cost":
                length = learnt.start(keys["ngram"], lambda: DraftLength(slope=s.rapid.verify_slope))
                if drafter_kind == "hybrid":
                    llm_length = learnt.start(keys["llm"], lambda: DraftLength.for_llm(s.rapid.verify_slope))
            ngram = NgramDrafter(draft_ids, max_ngram=s.rapid.max_ngram, min_ngram=s.rapid.min_ngram,
                                 fallback_ids=target_ids if s.rapid.ngram_whole_context else (),
                                 min_agreement=s.rapid.ngram_min_agreement, length=length)
            drafter = ngram if drafter_kind == "ngram" else HybridDrafter(
                ngram, LMDrafter(drafter_dec.model, draft_ids, min_confidence=min_conf), llm_length=llm_length)
    else:
        log.info("rapid: retrieval kept no chunk over threshold %.2f; target-only decoding", threshold)
    gen = rapid_generate(state, drafter, target.tokenizer, target_ids, config=config, on_token=on_token)
    if drafter is not None and drafter_kind != "llm":
        learnt.keep(keys["ngram"], length)
        learnt.keep(keys["llm"], llm_length)
    if kv == "sentencekv" and "kv_fallback" not in kv_stats:
        kv_stats = store.stats(prompt, prompt.cache.peak_prefill_bytes)

    used_hits = [h for h in doc_hits if any(c.start + start < h.end and c.end + start > h.start for c in retrieved.chunks)]
    evidence_hits = sorted(used_hits or [h for h in hits if h.doc_id == doc_id] or hits, key=lambda h: -h.score)
    timings = {
        "retrieval_ms": round(r_ms, 2),
        "ttft_ms": round(r_ms + prep_ms + gen.ttft_ms, 2),
        "total_ms": round((time.perf_counter() - t0) * 1000, 2),
        "tokens_per_s": round(gen.tokens_per_s, 2),
    }
    stats = {
        **gen.stats(),
        "doc_id": doc_id,
        "drafter": drafter_kind if drafter is not None else None,
        "drafter_model": drafter_dec.name,
        "drafter_weights": weights_of(drafter_dec.model) if drafter is not None and drafter_kind != "ngram" else None,
        "gamma": config.gamma,
        "draft_length": s.rapid.draft_length if drafter is not None and drafter_kind != "llm" else None,
        "ngram_whole_context": s.rapid.ngram_whole_context if drafter is not None and drafter_kind != "llm" else None,
        "warm_start": bool(s.rapid.warm_start and length is not None) if drafter is not None and drafter_kind != "llm" else None,
        "eta": config.eta,
        "tail": config.tail,
        "consensus": config.consensus,
        "residual": config.residual,
        "temperature": config.temperature,
        "context_tokens": window_tokens,
        "document_tokens": doc_tokens,
        "truncated": window_tokens < doc_tokens,
        "context_chars": [start, end],
        "drafter_context_tokens": retrieved.tokens,
        "drafter_budget_tokens": retrieved.budget_tokens,
        "drafter_chunks": [[c.start + start, c.end + start] for c in retrieved.chunks],
        "drafter_top_relevance": retrieved.top_relevance,  # the best kept chunk's dense cosine (threshold scale)
        "prompt_tokens": gen.prompt_tokens,
        "drafter_prompt_tokens": len(draft_ids),
        "generated_tokens": len(gen.token_ids),
        **kv_stats,
    }
    return Answer(gen.text, ground(gen.text, evidence_hits, pipe.corpus, question=q.text), timings, stats, "rapid")
