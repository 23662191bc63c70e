"""QA mode ``cfic``: evidence = verbatim spans extracted by the decoder (CFIC), answer from them.

Flow: the pipeline's retriever ranks chunks (they choose the document and, when it is longer
than the extractor's budget, the regions the model reads); :class:`CficExtractor` prefills the
question + document once and decodes the evidence spans (exact document offsets); the answer is
generated with the spans as the only context. When the extractor finds no evidence (P(end)
before any evidence token above the threshold) the answer is ``unknown`` with no evidence.

Options come from ``Question.options`` (the keys of :data:`QUESTION_OPTIONS`) over the server's
``Settings.cfic`` (``LONGRAG_CFIC_*`` environment variables).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import fields

from pydantic import ValidationError

from longrag.config import CficSettings
from longrag.errors import InvalidRequestError
from longrag.generation.decoding import TokenCallback
from longrag.generation.prompts import context_block
from longrag.retrieval.cfic import CficExtractor, CficOptions, load_adapter_extractor
from longrag.services.qa import Answer, Evidence, QAPipeline, Question, register_mode

log = logging.getLogger(__name__)


_extractors: dict[tuple[str, str | None], CficExtractor] = {}
_lock = threading.Lock()


def get_extractor(pipe: QAPipeline, name: str | None, adapter: str | None,
                  prefix_cache_mb: float = 1024) -> CficExtractor:
    """One extractor per (decoder, adapter) per process (models come from the registry).

    The extractor keeps the KV of the documents it read last (``prefix_cache_mb``, set when the
    process creates it), so a second question on the same document prefills only itself.
    """
    from longrag.models.registry import load_decoder

    dec = load_decoder(name) if name else pipe.decoder
    key = (dec.name, adapter)
    with _lock:
        if key not in _extractors:
            _extractors[key] = (load_adapter_extractor(dec, adapter, prefix_cache_mb=prefix_cache_mb) if adapter
                                else CficExtractor(dec.model, dec.tokenizer, context_window=dec.context_window,
                                                   prefix_cache_mb=prefix_cache_mb))
        return _extractors[key]


# set by the server only (env): the cache size is per process, an adapter is a folder on the server
SERVER_ONLY = ("prefix_cache_mb", "adapter")
QUESTION_OPTIONS = tuple(f for f in CficSettings.model_fields if f not in SERVER_ONLY)


def _settings(base: CficSettings, q: Question) -> CficSettings:
    """The server's CFIC settings with the question's options over them."""
    known = {k: v for k, v in (q.options or {}).items() if k in QUESTION_OPTIONS}
    if known.get("extractor") is not None:
        from longrag.models.registry import BUNDLED

        decoders = sorted(n for n, spec in BUNDLED.items() if spec.kind == "decoder")
        if str(known["extractor"]).lower() not in decoders:  # a question names a bundled decoder, not a path
            raise InvalidRequestError(f"unknown extractor {known['extractor']!r}; choose from {decoders}")
    if not known:
        return base
    try:  # validated like the environment: a question's top_k=0 or method="guess" is refused
        return CficSettings.model_validate({**base.model_dump(), **known})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequestError(f"cfic options: {problems}") from None


def _options(s: CficSettings) -> CficOptions:
    names = {f.name for f in fields(CficOptions)}
    return CficOptions(**{k: v for k, v in s.model_dump().items() if k in names})


@register_mode("cfic", options=QUESTION_OPTIONS)
def cfic_mode(pipe: QAPipeline, q: Question, on_token: TokenCallback | None) -> Answer:
    """Retrieve (to pick the document and regions), extract verbatim evidence, answer from it."""
    t0 = time.perf_counter()
    s = _settings(pipe.settings.cfic, q)
    hits, r_ms = pipe.retrieve(q)
    if not hits:
        raise InvalidRequestError("no passages found for the question")
    doc_id = q.doc_ids[0] if q.doc_ids and len(q.doc_ids) == 1 else hits[0].doc_id
    text = pipe.corpus.text(doc_id)
    sentences = pipe.corpus.store.sentences(doc_id)
    anchors: list[int] = []
    for h in (h for h in hits if h.doc_id == doc_id):  # retrieval rank -> sentence anchors
        anchors.extend(x.index for x in sentences if x.start < h.end and x.end > h.start and x.index not in anchors)
    extractor = get_extractor(pipe, s.extractor, s.adapter, s.prefix_cache_mb)
    t1 = time.perf_counter()
    res = extractor(text, sentences, q.text, anchors=anchors or None, options=_options(s))
    x_ms = (time.perf_counter() - t1) * 1000
    evidence = [Evidence(doc_id, sp.start, sp.end, sp.text) for sp in res.spans]
    stats = {
        "doc_id": doc_id,
        "cfic_candidates": res.candidates,
        "cfic_spans": len(res.spans),
        "cfic_no_evidence": res.no_evidence,
        "cfic_p_end_at_start": round(res.p_end_at_start, 5),
        "cfic_prompt_tokens": res.prompt_tokens,
        "cfic_regions": [list(r) for r in res.regions],
        "cfic_method": s.method,
        "cfic_extractor": f"{s.extractor or pipe.decoder.name}{' + ' + s.adapter if s.adapter else ''}",
        "extraction_ms": round(x_ms, 2),
        "cfic_prefill_ms": res.timings.get("prefill_ms", 0.0),
        "cfic_document_cached": bool(res.stats.get("head_cached", False)),
    }
    if res.no_evidence:
        if on_token is not None:
            on_token("unknown")
        total = (time.perf_counter() - t0) * 1000
        return Answer("unknown", [], {"retrieval_ms": round(r_ms, 2), "ttft_ms": round(total, 2),
                                      "total_ms": round(total, 2), "tokens_per_s": 0.0}, stats, "cfic")
    gen = pipe.answer_from_context(q, context_block([e.text for e in evidence]), on_token)
    stats.update(prompt_tokens=gen.prompt_tokens, generated_tokens=len(gen.token_ids))
    before_gen = r_ms + x_ms
    return Answer(
        gen.text,
        evidence,
        {"retrieval_ms": round(r_ms, 2), "extraction_ms": round(x_ms, 2),
         "ttft_ms": round(before_gen + gen.ttft_ms, 2),
         "total_ms": round((time.perf_counter() - t0) * 1000, 2), "tokens_per_s": round(gen.tokens_per_s, 2)},
        stats,
        "cfic",
    )
