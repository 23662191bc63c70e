"""QA mode ``refrag``: the document window as compressed chunk embeddings (docs/refrag.md).

A question retrieves as ``plain`` does (to anchor the window), takes up to
``LONGRAG_REFRAG_MAX_CHUNKS`` chunks of the best document around the best hit, expands a fraction
``p`` of them back to raw tokens (query-aware or perplexity heuristic) and answers through
``inputs_embeds``. Chunk embeddings come from the document's ``refrag-k<k>`` artifact.

Ingestion: importing this module (which ``QAPipeline`` does for every mode module) registers
nothing by itself; the first ``refrag`` question on a corpus installs :func:`ingest_hook` on it
(unless ``LONGRAG_REFRAG_AT_INGEST=false``), so later ingestion through that corpus pays for the
chunk embeddings, and corpora that never use the mode never pay. A document without the artifact
(ingested before, or by another process without the hook) gets it computed and stored on its
first ``refrag`` question (``stats.chunk_cache = "computed"``); later questions read it
(``"hit"``). Processes that ingest (workers) can call :func:`install` on their corpus.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longrag.config import Settings
from longrag.errors import InvalidRequestError
from longrag.generation.decoding import TokenCallback
from longrag.generation.prompts import answer_messages, chat_text, encode_halves
from longrag.generation.refrag import (
    ChunkArtifact,
    Refrag,
    RefragCheckpointError,
    artifact_name,
    available_checkpoints,
    checkpoint_config,
    chunk_ids as rf_chunk_ids,
    find_checkpoint,
    generate_from_embeds,
    load_refrag,
    pack_artifact,
    unpack_artifact,
)
from longrag.services.qa import Answer, QAPipeline, Question, ground, register_mode

log = logging.getLogger(__name__)

_MARK = "\u2063REFRAG-CONTEXT\u2063"
_lock = threading.Lock()
_runtimes: dict[str, Refrag] = {}


@dataclass(frozen=True)
class Resolved:
    """Which projector a question uses, and why."""

    checkpoint: Path
    decoder: str
    note: str | None  # set when the configured decoder had no projector


def resolve_checkpoint(settings: Settings, k: int) -> Resolved:
    """The projector for the configured decoder and ``k``; else one for ``k`` of another decoder."""
    if settings.refrag.weights is not None:
        if not Path(settings.refrag.weights).is_file():
            raise RefragCheckpointError(f"LONGRAG_REFRAG_WEIGHTS: no REFRAG projector checkpoint at {settings.refrag.weights}")
        cfg = checkpoint_config(settings.refrag.weights)
        if cfg.k != k:
            raise InvalidRequestError(f"LONGRAG_REFRAG_WEIGHTS was trained for k={cfg.k}, not k={k}")
        note = None if cfg.decoder == settings.decoder else (
            f"projector {settings.refrag.weights.name} is for {cfg.decoder}; using that decoder instead of {settings.decoder}")
        return Resolved(Path(settings.refrag.weights), cfg.decoder, note)
    path = find_checkpoint(settings.decoder, k)
    if path is not None:
        return Resolved(path, settings.decoder, None)
    others = [(p, c) for p, c in available_checkpoints() if c.k == k]
    if not others:
        ks = sorted({c.k for _, c in available_checkpoints()})
        raise InvalidRequestError(f"no REFRAG projector for k={k}; trained projectors exist for k in {ks}")
    p, c = others[0]
    return Resolved(p, c.decoder, f"no REFRAG projector for {settings.decoder} (k={k}); using {c.decoder}, "
                                  f"the decoder {p.name} was trained for")


def get_refrag(settings: Settings, k: int) -> tuple[Refrag, Resolved]:
    """Load (once per process) the REFRAG runtime for ``k``."""
    res = resolve_checkpoint(settings, k)
    key = f"{res.checkpoint}@{settings.device}"
    with _lock:
        if key not in _runtimes:
            _runtimes[key] = load_refrag(res.checkpoint, decoder_name=res.decoder,
                                         device=None if settings.device == "auto" else settings.device)
        return _runtimes[key], res


def ingest_hook(corpus: Any, doc_id: str, units: Any) -> None:
    """``Corpus.ingest_hooks`` entry: store the document's chunk embeddings (``refrag-k<k>``)."""
    settings = corpus.settings
    rt, _ = get_refrag(settings, settings.refrag.k)
    art = rt.build_artifact(units.text, k=settings.refrag.k)
    corpus.store.put_artifact(doc_id, artifact_name(settings.refrag.k), pack_artifact(art))


def install(corpus: Any) -> None:
    """Compute REFRAG chunk embeddings when ``corpus`` ingests (idempotent)."""
    if ingest_hook not in corpus.ingest_hooks:
        corpus.ingest_hooks.append(ingest_hook)


def document_artifact(corpus: Any, doc_id: str, rt: Refrag, k: int) -> tuple[ChunkArtifact, str]:
    """The stored artifact (``"hit"``), or compute and store it now (``"computed"``)."""
    data = corpus.store.get_artifact(doc_id, artifact_name(k))
    if data is not None:
        art = unpack_artifact(data)
        if art.decoder == rt.config.decoder and art.embedder == rt.config.embedder and art.k == k:
            return art, "hit"
        log.info("REFRAG artifact of %s is for %s/%s; recomputing", doc_id, art.decoder, art.embedder)
    art = rt.build_artifact(corpus.text(doc_id), k=k)
    corpus.store.put_artifact(doc_id, artifact_name(k), pack_artifact(art))
    return art, "computed"


def split_chat(tokenizer: Any, question: str) -> tuple[list[int], list[int]]:
    """Token ids of the answer prompt before and after its context."""
    text = chat_text(tokenizer, answer_messages(question, _MARK))
    before, after = text.split(_MARK, 1)
    return encode_halves(tokenizer, before + after, len(before))


def chunk_window(art: ChunkArtifact, anchor_char: int, max_chunks: int) -> tuple[int, int]:
    """At most ``max_chunks`` chunks centred on the chunk holding ``anchor_char``."""
    n = art.n_chunks
    if n <= max_chunks:
        return 0, n
    centre = int(np.searchsorted(art.char_starts, anchor_char, side="right")) - 1
    first = max(0, min(max(centre, 0) - max_chunks // 2, n - max_chunks))
    return first, first + max_chunks


@register_mode("refrag", options=("refrag_k", "refrag_p", "refrag_policy"))
def refrag_mode(pipe: QAPipeline, q: Question, on_token: TokenCallback | None) -> Answer:
    """Answer from compressed chunk embeddings of the best document's window."""
    t0 = time.perf_counter()
    s = pipe.settings
    k = q.option("refrag_k", s.refrag.k, int)
    p = q.option("refrag_p", s.refrag.p, float)
    policy = q.option("refrag_policy", s.refrag.policy, str)
    if not 0.0 <= p <= 1.0:
        raise InvalidRequestError("refrag_p must be in [0, 1]")
    if policy not in ("query", "ppl", "none"):
        raise InvalidRequestError(f"unknown refrag_policy {policy!r}; choose query | ppl | none")
    rt, res = get_refrag(s, k)  # RefragCheckpointError (a LongragError) names the models on a mismatch
    if s.refrag.at_ingest:
        install(pipe.corpus)
    hits, r_ms = pipe.retrieve(q)
    if not hits:
        raise InvalidRequestError("no passages found for the question")
    t1 = time.perf_counter()
    doc_id = q.doc_ids[0] if q.doc_ids and len(q.doc_ids) == 1 else hits[0].doc_id
    art, cache_state = document_artifact(pipe.corpus, doc_id, rt, k)
    anchor = next((h for h in hits if h.doc_id == doc_id), hits[0])
    first, last = chunk_window(art, anchor.start, s.refrag.max_chunks)
    chunks = rf_chunk_ids(art.token_ids[first * k : last * k].tolist(), k)
    emb = art.embeddings[first:last]
    expand = rt.select(policy, chunks, emb, p, q.text)
    prefix, suffix = split_chat(rt.tokenizer, q.text)
    embeds, layout = rt.inputs(chunks, emb, expand=expand, prefix_ids=prefix, suffix_ids=suffix)
    gen = generate_from_embeds(rt.model, rt.tokenizer, embeds,
                               max_new_tokens=q.max_new_tokens or s.max_new_tokens, on_token=on_token, t0=t1)
    doc_hits = [h for h in hits if h.doc_id == doc_id] or hits
    stats: dict[str, Any] = {
        "doc_id": doc_id,
        "k": k,
        "p": p,
        "policy": policy,
        "chunks_total": layout.n_chunks,
        "chunks_compressed": layout.n_compressed,
        "chunks_expanded": layout.n_expanded,
        "context_tokens": layout.context_tokens,
        "document_chunks": art.n_chunks,
        "decoder_input_length": layout.input_length,
        "compression": round(layout.context_tokens / max(1, layout.input_length - layout.prefix_tokens - layout.suffix_tokens), 2),
        "chunk_cache": cache_state,
        "context_chars": [int(art.char_starts[first]), int(art.char_ends[last - 1])] if last > first else [0, 0],
        "decoder": rt.decoder_name,
        "checkpoint": res.checkpoint.name,
        "prompt_tokens": gen.prompt_tokens,
        "generated_tokens": len(gen.token_ids),
    }
    if res.note:
        stats["decoder_note"] = res.note
    timings = {
        "retrieval_ms": round(r_ms, 2),
        "ttft_ms": round(r_ms + gen.ttft_ms, 2),
        "total_ms": round((time.perf_counter() - t0) * 1000, 2),
        "tokens_per_s": round(gen.tokens_per_s, 2),
    }
    return Answer(gen.text, ground(gen.text, doc_hits, pipe.corpus, question=q.text), timings, stats, "refrag")
