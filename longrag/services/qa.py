"""Grounded question answering: retrieve, build the context by mode, decode, attach evidence.

Modes are registered in :data:`MODES`; later techniques add theirs (``cfic``, ``rapid``,
``refrag``) with :func:`register_mode`. Every mode returns the same :class:`Answer` shape.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from longrag.config import Settings, get_settings
from longrag.errors import InvalidRequestError
from longrag.generation.decoding import TokenCallback, generate
from longrag.generation.prompts import answer_messages, context_block, encode_chat, prompt_overhead
from longrag.retrieval.bm25 import tokenize
from longrag.retrieval.types import Hit
from longrag.services.corpus import Corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Evidence:
    doc_id: str
    start: int
    end: int
    text: str
    page: int | None = None  # 1-based PDF page where the span starts
    section: str | None = None  # heading path ("Guide > Install") where the format has headings


def placed(corpus: Corpus, evidence: Sequence[Evidence]) -> list[Evidence]:
    """``evidence`` with page and section filled in from the document's stored layout."""
    out = []
    for e in evidence:
        if e.page is None and e.section is None:
            page, section = corpus.locate(e.doc_id, e.start)
            e = replace(e, page=page, section=section) if page is not None or section is not None else e
        out.append(e)
    return out


@dataclass
class Answer:
    answer: str
    evidence: list[Evidence]
    timings: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)
    mode: str = "plain"
    answerable: bool = True  # False: the documents do not answer the question (``answer`` is "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "answerable": self.answerable,
            "evidence": [asdict(e) for e in self.evidence],
            "timings": self.timings,
            "stats": self.stats,
            "mode": self.mode,
        }


@dataclass
class Question:
    """One question and its options, as every mode receives it."""

    text: str
    doc_ids: list[str] | None = None
    mode: str = "plain"
    k: int | None = None
    max_new_tokens: int | None = None
    retriever: str | None = None  # chunk | situated | bm25 | hybrid (None: the default)
    kv: str | None = None  # full | sentencekv (None: automatic by context length)
    link_hop: int | None = None  # title-link hop: top hits read (0: off; None: the default)
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any, kind: type) -> Any:
        """The mode option ``name`` as ``kind`` (``bool``: true or false only); absent or null:
        ``default``; a value that is not a ``kind``: :class:`InvalidRequestError`."""
        value = self.options.get(name) if self.options else None
        if value is None:
            return default
        if kind is bool:
            if isinstance(value, bool):
                return value
        else:
            try:
                return kind(value)
            except (TypeError, ValueError):
                pass
        wanted = "true or false" if kind is bool else kind.__name__
        raise InvalidRequestError(f"option {name!r} must be {wanted}, got {value!r}")


ModeFn = Callable[["QAPipeline", Question, TokenCallback | None], Answer]
MODES: dict[str, ModeFn] = {}
MODE_OPTIONS: dict[str, frozenset[str]] = {}  # the ``Question.options`` keys each mode reads


def register_mode(name: str, options: Iterable[str] = ()) -> Callable[[ModeFn], ModeFn]:
    """Register a mode and the option keys it reads (any other key is refused)."""
    def deco(fn: ModeFn) -> ModeFn:
        MODES[name] = fn
        MODE_OPTIONS[name] = frozenset(options)
        return fn

    return deco


def check_question_text(text: str | None, settings: Settings) -> None:
    """A clear error for an empty question or one longer than ``max_question_chars``."""
    if not text or not text.strip():
        raise InvalidRequestError("the question is empty")
    if len(text) > settings.max_question_chars:
        raise InvalidRequestError(
            f"the question is {len(text)} characters; the limit is {settings.max_question_chars} "
            "(quote less of the passage, or set LONGRAG_MAX_QUESTION_CHARS)"
        )


def check_mode(mode: str, options: dict[str, Any] | None) -> None:
    """A clear error for an unknown mode, or option keys the mode does not read (a typo would
    otherwise be ignored)."""
    if mode not in MODES:
        raise InvalidRequestError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
    unknown = sorted(set(options or {}) - MODE_OPTIONS.get(mode, frozenset()))
    if unknown:
        takes = ", ".join(sorted(MODE_OPTIONS.get(mode, ()))) or "none"
        raise InvalidRequestError(f"mode {mode!r} has no option {', '.join(map(repr, unknown))}; its options: {takes}")


_WORD = re.compile(r"\w+", re.UNICODE)
NOT_FOUND = "unknown"
"""What the prompt tells the decoder to reply when the context does not hold the answer."""


def _norm_words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def is_not_found(answer: str) -> bool:
    """The decoder's reply says the context does not answer (it starts with the prompt's not-found word)."""
    words = _norm_words(answer)
    return bool(words) and words[0] == NOT_FOUND


def _holds(words: Sequence[str], text_words: Sequence[str]) -> bool:
    """``words`` occur, in order and whole, in ``text_words``."""
    return bool(words) and f" {' '.join(words)} " in f" {' '.join(text_words)} "


def is_grounded(answer: str, evidence: Sequence[Evidence]) -> bool:
    """The answer's words occur, in order and whole, in a cited span."""
    words = _norm_words(answer)
    return any(_holds(words, _norm_words(e.text)) for e in evidence)


_TITLES = frozenset({"mr", "mrs", "miss", "ms", "dr", "sir", "lady", "lord", "st", "s"})


def _content_terms(text: str) -> set[str]:
    return {t for t in tokenize(text) if t not in _TITLES}


def _asked_terms(question: str) -> set[str] | None:
    """The question's content terms; None for a choice question ("... A or B?"), which may be
    answered with its own words."""
    return None if re.search(r"\bor\b", question, re.I) else _content_terms(question)


def _echoes(answer: str, asked: set[str] | None) -> bool:
    terms = _content_terms(answer)
    return asked is not None and bool(terms) and terms <= asked


def echoes_question(answer: str, question: str) -> bool:
    """The answer only repeats the question's own words ("Whom does Irene Adler marry?" ->
    "Irene Adler")."""
    return _echoes(answer, _asked_terms(question))


class AnswerGuard:
    """Answer verification while streaming: a decoded answer that only echoes the question, or
    whose words do not occur in the context, is turned down (``accept``) and decoded again; tokens
    are held back until the answer so far holds a whole word the question does not, so an echo
    never reaches the stream."""

    def __init__(self, question: str, on_token: TokenCallback | None, context: str | None = None) -> None:
        self.asked = _asked_terms(question)
        self.sink = on_token
        self.held = ""
        self.open = False
        self.context_terms = _content_terms(context) if context else None

    def on_token(self, piece: str) -> None:
        if self.open:
            self._emit(piece)
            return
        self.held += piece
        whole = re.sub(r"\w+$", "", self.held)  # the last word may still grow
        if _content_terms(whole) and not _echoes(whole, self.asked):
            self.open = True
            self._emit(self.held)

    def accept(self, answer: str) -> bool:
        ungrounded = (self.context_terms is not None and not is_not_found(answer)
                      and not _content_terms(answer) <= self.context_terms)
        if _echoes(answer, self.asked) or ungrounded:
            self.held, self.open = "", False
            return False
        return True

    def finish(self) -> None:
        """Release what is still held (the accepted answer, or the last try)."""
        if not self.open and self.held:
            self._emit(self.held)
        self.held, self.open = "", True

    def _emit(self, piece: str) -> None:
        if self.sink is not None:
            self.sink(piece)


def judge(answer: Answer) -> Answer:
    """Mark an answer as the documents' (``stats.grounded``: its words occur in a cited span) or
    as not found (``answerable`` false, ``answer`` "", no evidence)."""
    answer.stats["grounded"] = is_grounded(answer.answer, answer.evidence)
    if is_not_found(answer.answer):
        answer.answerable = False
        answer.stats["decoder_answer"] = answer.answer
        answer.answer = ""
        answer.evidence = []
    return answer


def ground(
    answer: str, hits: Sequence[Hit], corpus: Corpus, *, question: str = "", limit: int = 3
) -> list[Evidence]:
    """Evidence for an answer: the sentences of the retrieved passages that contain it.

    Sentences holding the answer words in order are ranked by how many of the question's words
    they share (then by retrieval rank), so the sentence that states the answer in the
    question's terms comes first. Falls back to the passages themselves (by retrieval rank)
    when no sentence contains the answer. Offsets always index the document's parsed text.
    """
    words = _norm_words(answer)
    asked = {w for w in _norm_words(question) if len(w) > 2}
    scored: list[tuple[int, int, Evidence]] = []
    if words and not is_not_found(answer):
        for rank, hit in enumerate(hits):
            text = corpus.text(hit.doc_id)
            for s in corpus.store.sentences(hit.doc_id):
                if s.end <= hit.start or s.start >= hit.end:
                    continue
                sent_words = _norm_words(text[s.start : s.end])
                if _holds(words, sent_words):
                    ev = Evidence(hit.doc_id, s.start, s.end, text[s.start : s.end])
                    if all(ev != e for _, _, e in scored):
                        scored.append((-len(asked & set(sent_words)), rank, ev))
    if scored:
        return placed(corpus, [ev for _, _, ev in sorted(scored, key=lambda t: (t[0], t[1]))[:limit]])
    return placed(corpus, [Evidence(h.doc_id, h.start, h.end, h.text) for h in hits[:limit]])


class QAPipeline:
    """Answers questions over a :class:`Corpus` with the registry's decoder."""

    def __init__(self, corpus: Corpus, *, settings: Settings | None = None, decoder_name: str | None = None) -> None:
        self.corpus = corpus
        self.settings = settings or corpus.settings or get_settings()
        self.decoder_name = decoder_name or self.settings.decoder
        self._decoder = None
        from longrag.services import modes

        modes.load_all()

    @property
    def decoder(self):
        if self._decoder is None:
            from longrag.models.registry import load_decoder

            self._decoder = load_decoder(self.decoder_name)
        return self._decoder

    def ask(self, question: Question, on_token: TokenCallback | None = None) -> Answer:
        check_question_text(question.text, self.settings)
        check_mode(question.mode, question.options)
        question.doc_ids = self.corpus.check_docs(question.doc_ids)
        if not self.corpus.list():
            raise InvalidRequestError("no documents are ingested yet")
        answer = MODES[question.mode](self, question, on_token)
        answer.evidence = placed(self.corpus, answer.evidence)  # modes that build their own (cfic)
        return judge(answer)

    # -- shared steps used by the modes ---------------------------------------------------------
    def retrieve(self, question: Question) -> tuple[list[Hit], float]:
        t0 = time.perf_counter()
        hits = self.corpus.search(question.text, k=question.k or self.settings.top_k, doc_ids=question.doc_ids,
                                  retriever=question.retriever, link_hop=question.link_hop)
        return hits, (time.perf_counter() - t0) * 1000

    def answer_from_context(
        self, question: Question, context: str, on_token: TokenCallback | None
    ):
        dec = self.decoder
        ids = encode_chat(dec.tokenizer, answer_messages(question.text, context))
        max_new = question.max_new_tokens or self.settings.max_new_tokens
        if not self.settings.answer_checks:
            return generate(dec.model, dec.tokenizer, ids, max_new_tokens=max_new, on_token=on_token)
        guard = AnswerGuard(question.text, on_token, context)
        gen = generate(dec.model, dec.tokenizer, ids, max_new_tokens=max_new, on_token=guard.on_token,
                       accept=guard.accept, max_tries=self.settings.answer_tries)
        guard.finish()
        return gen

    def context_budget(self, question: Question) -> int:
        dec = self.decoder
        window = self.settings.full_context_tokens or dec.context_window
        window = min(window, dec.context_window)
        reserve = (question.max_new_tokens or self.settings.max_new_tokens) + prompt_overhead(dec.tokenizer, question.text) + 8
        return max(64, window - reserve)


def _timings(retrieval_ms: float, gen, t0: float) -> dict[str, float]:
    return {
        "retrieval_ms": round(retrieval_ms, 2),
        "ttft_ms": round(retrieval_ms + gen.ttft_ms, 2),
        "total_ms": round((time.perf_counter() - t0) * 1000, 2),
        "tokens_per_s": round(gen.tokens_per_s, 2),
    }


@register_mode("plain")
def plain_mode(pipe: QAPipeline, q: Question, on_token: TokenCallback | None) -> Answer:
    """Retrieve, build the context (sentence windows or chunks), answer with the answer checks."""
    t0 = time.perf_counter()
    section_of = section_finder(pipe.corpus)
    hits, passages, r_ms = plain_context(pipe, q, section_of)
    gen = pipe.answer_from_context(q, context_block(headed_passages(passages, section_of)), on_token)
    return Answer(
        gen.text,
        ground(gen.text, passages, pipe.corpus, question=q.text),
        _timings(r_ms, gen, t0),
        {"passages": len(passages), "prompt_tokens": gen.prompt_tokens, "generated_tokens": len(gen.token_ids),
         "rejected_answers": list(gen.rejected),
         "confidence": None if gen.confidence is None else round(gen.confidence, 4)},
        "plain",
    )


def plain_context(pipe: QAPipeline, q: Question, section_of: Callable[[str, int], str] | None = None
                  ) -> tuple[list[Hit], list[Hit], float]:
    """(retrieved hits, the passages the prompt shows in its order, retrieval ms).

    ``context_unit`` window: sentence windows (retrieval/windows.py) around the best sentences of
    the top ``window_pool`` chunks, best first, each ranked under its heading path
    (``section_of``, default :func:`section_finder`); chunk: the top ``k`` chunks in document order.
    """
    from functools import cache

    from longrag.retrieval.windows import WindowConfig, sentence_windows

    s = pipe.settings
    t0 = time.perf_counter()
    if s.context_unit == "chunk" or q.k is not None:  # an explicit k asks for k chunks
        hits, _ = pipe.retrieve(q)
        return hits, sorted(hits, key=lambda h: (h.doc_id, h.start)), (time.perf_counter() - t0) * 1000
    hits = pipe.corpus.search(q.text, k=s.window_pool, doc_ids=q.doc_ids, retriever=q.retriever,
                              link_hop=q.link_hop)
    windows = sentence_windows(
        q.text, hits, sentences_of=cache(pipe.corpus.store.sentences), text_of=cache(pipe.corpus.text),
        encode=pipe.corpus.embedder.encode, config=WindowConfig(top=s.window_top, radius=s.window_radius),
        section_of=section_of or section_finder(pipe.corpus),
    )
    return hits, windows, (time.perf_counter() - t0) * 1000


def section_finder(corpus: Corpus) -> Callable[[str, int], str]:
    """``(doc_id, offset) -> heading path`` (``""``: none), each document's sections read once."""
    from functools import cache

    from longrag.retrieval.parse import section_at

    sections = cache(corpus.sections)
    return lambda doc_id, offset: section_at(sections(doc_id), [offset])[0]


def headed_passages(passages: Sequence[Hit], section_of: Callable[[str, int], str]) -> list[str]:
    """Each passage's text, led by its nearest heading in parentheses when it lies in a section
    ("(Ingrid Solberg) She joined in 2009."): the decoder then knows whose sentence it reads.
    Only the nearest heading: the outer ones (a document title that names a company) are shared
    by every passage and would offer the decoder a name that answers nothing. The evidence stays
    the passage itself, at its exact offsets. ``section_of``: :func:`section_finder`."""
    from longrag.retrieval.parse import nearest_heading, opens_section

    out = []
    for h in passages:
        path = section_of(h.doc_id, h.start)
        out.append(f"({nearest_heading(path)}) {h.text}" if path and not opens_section(h.text, path) else h.text)
    return out


@register_mode("full")
def full_mode(pipe: QAPipeline, q: Question, on_token: TokenCallback | None) -> Answer:
    """The whole document in the prompt, up to the decoder's window (centred on the best hit)."""
    t0 = time.perf_counter()
    hits, r_ms = pipe.retrieve(q)
    if not hits:
        raise InvalidRequestError("no passages found for the question")
    doc_id = q.doc_ids[0] if q.doc_ids and len(q.doc_ids) == 1 else hits[0].doc_id
    text = pipe.corpus.text(doc_id)
    tok = pipe.decoder.tokenizer
    budget = pipe.context_budget(q)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    truncated = len(offsets) > budget
    start_char, end_char = 0, len(text)
    if truncated:
        anchor = next((h for h in hits if h.doc_id == doc_id), hits[0])
        centre = next((i for i, (a, _) in enumerate(offsets) if a >= anchor.start), 0)
        first = max(0, min(centre - budget // 2, len(offsets) - budget))
        start_char, end_char = offsets[first][0], offsets[first + budget - 1][1]
    anchor_char = next((h.start for h in hits if h.doc_id == doc_id), 0)
    gen, kv_stats, (start_char, end_char) = _full_generate(
        pipe, q, doc_id, text, (start_char, end_char), min(len(offsets), budget), anchor_char, on_token
    )
    doc_hits = [h for h in hits if h.doc_id == doc_id] or hits
    return Answer(
        gen.text,
        ground(gen.text, doc_hits, pipe.corpus, question=q.text),
        _timings(r_ms, gen, t0),
        {
            "doc_id": doc_id,
            "context_tokens": min(len(offsets), budget),
            "document_tokens": len(offsets),
            "truncated": truncated,
            "context_chars": [start_char, end_char],
            "prompt_tokens": gen.prompt_tokens,
            "generated_tokens": len(gen.token_ids),
            **kv_stats,
        },
        "full",
    )


def _full_generate(pipe: QAPipeline, q: Question, doc_id: str, text: str, span: tuple[int, int],
                   context_tokens: int, anchor_char: int, on_token: TokenCallback | None):
    """Decode the full-mode prompt with a full KV cache or SentenceKV (``q.kv``; None: by length).

    Returns (generation result, kv stats, the context span used). SentenceKV reuses the
    document's stored cache (services/kvcache.py); windows of documents longer than the
    decoder's are then aligned so that nearby questions share one.
    """
    from longrag.generation.sentencekv import SentenceKVError
    from longrag.services.kvcache import DocumentKVCache, context_window_tokens, doc_window

    if q.kv not in (None, "full", "sentencekv"):
        raise InvalidRequestError(f"unknown kv {q.kv!r}; choose from ['full', 'sentencekv']")
    s = pipe.settings
    kv = q.kv or ("sentencekv" if context_tokens > s.sentencekv.min_context else "full")
    fallback = None
    if kv == "sentencekv":
        dec = pipe.decoder
        if span != (0, len(text)):
            w = doc_window(dec.tokenizer, text, context_window_tokens(s, dec), anchor_char=anchor_char)
            span = (w.start, w.end)
        try:
            run = DocumentKVCache(s, dec).answer(
                doc_id, span, text[span[0] : span[1]], q.text,
                max_new_tokens=q.max_new_tokens or s.max_new_tokens, on_token=on_token,
            )
            return run.result, run.stats, span
        except SentenceKVError as exc:
            if q.kv == "sentencekv":
                raise InvalidRequestError(f"SentenceKV cannot serve this request: {exc}") from exc
            fallback = str(exc)
            log.info("SentenceKV not used (%s); full KV cache", exc)
    gen = pipe.answer_from_context(q, text[span[0] : span[1]], on_token)
    cfg = pipe.decoder.model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elt = next(pipe.decoder.model.parameters()).element_size()
    full = (gen.prompt_tokens + len(gen.token_ids)) * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2 * elt
    stats = {"kv": "full", "kv_bytes": full, "kv_bytes_full": full, "kv_budget": None}
    if fallback:
        stats["kv_fallback"] = fallback
    return gen, stats, span
