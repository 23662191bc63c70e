"""The document corpus: ingest, list, show, delete and search, with index and metadata in step.

The database (SQLite or PostgreSQL, :mod:`longrag.services.db`) holds documents, sentences,
chunks and vectors; one FAISS file per vector kind under this host's data dir is a cache of the
``vectors`` table, stamped with the database generation it reflects. Writers hold the
database's write lock (across processes and hosts); every write bumps the generation so other
processes and hosts reload or rebuild their indexes before searching.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np

from longrag.config import Settings, get_settings
from longrag.errors import EmptyDocumentError, FileTooLargeError, InvalidRequestError, NotFoundError
from longrag.retrieval.chunking import chunk_starts, sentence_chunks
from longrag.retrieval.embed import Embedder
from longrag.retrieval.index import VectorIndex
from longrag.retrieval.links import TitleLinks, link_hop
from longrag.retrieval.parse import ParsedDocument, parse_bytes
from longrag.retrieval.segment import split_sentences
from longrag.retrieval.types import Chunk, Hit, Sentence
from longrag.services.db import open_database
from longrag.services.store import DocumentInfo, Store

log = logging.getLogger(__name__)

DOC_CACHE_DIRS = ("kvcache",)
"""Folders under the data dir holding ``<name>/<doc_id>/`` caches, removed with the document."""

Progress = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class ParsedUnits:
    """What ingestion computed for one document before anything is written."""

    text: str
    sentences: list[Sentence]
    chunks: list[Chunk]
    sections: tuple[tuple[int, str], ...] = ()  # (offset, heading path) where each section starts


VectorBuilder = Callable[[Embedder, ParsedUnits], np.ndarray]
"""Computes one vector per chunk for a vector kind (``chunk``; later issues add more)."""


def chunk_vectors(embedder: Embedder, units: ParsedUnits) -> np.ndarray:
    return embedder.encode([units.text[c.start : c.end] for c in units.chunks])


class _DefaultBuilders(dict):
    """Marks the default ``vector_builders`` (replaced by chunk + situated in __post_init__)."""


RETRIEVERS = ("chunk", "situated", "bm25", "hybrid")
"""Values of ``Corpus.search(retriever=...)``, ``Question.retriever`` and ``--retriever``."""
DENSE_RETRIEVERS = ("chunk", "situated")
"""The retrievers whose scores are cosines (BM25 and fused scores have no absolute scale)."""

IngestHook = Callable[["Corpus", str, ParsedUnits], None]
"""Runs after a new document is committed (per-document caches: REFRAG chunk embeddings,
SentenceKV state, ...). Hooks store their results with ``corpus.store.put_artifact``."""


def _breaks(parsed: ParsedDocument) -> list[int]:
    """Where the parsed text's pages and sections start: chunks do not run across them."""
    return [*(parsed.pages or ()), *(offset for offset, _ in parsed.sections or ())]


class TextCache:
    """Parsed texts by document id, least recently used out first, at most ``max_chars`` in all.

    A document id is its content's hash, so a cached text never goes stale: a search reads each
    hit's document from the database once per process, not once per hit."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, doc_id: str, load: Callable[[str], str]) -> str:
        with self._lock:
            text = self._texts.get(doc_id)
            if text is not None:
                self._texts.move_to_end(doc_id)
                return text
        text = load(doc_id)
        with self._lock:
            if doc_id not in self._texts and len(text) <= self.max_chars:
                self._texts[doc_id] = text
                self._chars += len(text)
                while self._chars > self.max_chars:
                    _, old = self._texts.popitem(last=False)
                    self._chars -= len(old)
        return text


@dataclass(frozen=True, slots=True)
class IngestResult:
    doc_id: str
    title: str
    filename: str | None
    created: bool
    n_sentences: int
    n_chunks: int
    seconds: float


@dataclass
class Corpus:
    """Composes the store, the embedder and the FAISS indexes."""

    settings: Settings = field(default_factory=get_settings)
    embedder_factory: Callable[[], Embedder] | None = None
    vector_builders: dict[str, VectorBuilder] = field(default_factory=lambda: _DefaultBuilders(chunk=chunk_vectors))
    ingest_hooks: list[IngestHook] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(open_database(self.settings))
        self._embedder: Embedder | None = None
        self._indexes: dict[str, tuple[int, VectorIndex]] = {}
        self._mutex = threading.RLock()
        self._texts = TextCache(self.settings.text_cache_chars)
        self._lexical: tuple[int, object] | None = None  # (generation, BM25Index) for bm25/hybrid
        self._titles: tuple[int, TitleLinks, dict[str, int]] | None = None  # (generation, links, lead chunks)
        if type(self.vector_builders) is _DefaultBuilders:
            # Default: store situated vectors too (docs/situated.md); both kinds share one encoding.
            from longrag.retrieval.situated import SituatedVectorBuilder, config_from_settings

            builder = SituatedVectorBuilder(config_from_settings(self.settings))
            self.vector_builders = {"chunk": builder.chunk, "situated": builder.situated}

    # -- components ------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            if self.embedder_factory is not None:
                self._embedder = self.embedder_factory()
            else:
                from longrag.models.registry import load_embedder

                self._embedder = Embedder(load_embedder(self.settings.embedder))
        return self._embedder

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._mutex, self.store.write_lock():
            yield

    def _index_path(self, kind: str) -> Path:
        return self.settings.data_dir / "index" / f"{kind}.faiss"

    def _index_generation(self, kind: str) -> int | None:
        """The database generation this host's index file of ``kind`` reflects (None: unknown)."""
        try:
            return int(self._index_path(kind).with_suffix(".gen").read_text())
        except (OSError, ValueError):
            return None

    def _save_index(self, index: VectorIndex, kind: str, generation: int) -> None:
        path = self._index_path(kind)
        index.save(path)
        path.with_suffix(".gen").write_text(str(generation))

    def index(self, kind: str = "chunk") -> VectorIndex:
        """The FAISS index of one vector kind, reloaded or rebuilt when it is stale."""
        with self._mutex:
            gen = self.store.generation()
            cached = self._indexes.get(kind)
            if cached and cached[0] == gen:
                return cached[1]
            index = self._load_or_rebuild(kind)
            self._indexes[kind] = (gen, index)
            return index

    def _load_or_rebuild(self, kind: str) -> VectorIndex:
        path = self._index_path(kind)
        generation = self.store.generation()
        expected = self.store.count_vectors(kind)
        dim = self.embedder.dim
        if path.exists() and self._index_generation(kind) == generation:
            try:
                index = VectorIndex.load(path, dim)
                if index.ntotal == expected:
                    return index
                log.warning("index %s has %d vectors, store has %d: rebuilding", kind, index.ntotal, expected)
            except (RuntimeError, ValueError) as exc:
                log.warning("index %s unreadable (%s): rebuilding", kind, exc)
        elif path.exists():
            log.info("index %s is behind the database (generation %s): rebuilding", kind, generation)
        index = VectorIndex(dim)
        ids, vecs = self.store.vectors(kind)
        if len(ids):
            index.add(ids, vecs)
        self._save_index(index, kind, generation)
        return index

    # -- ingestion ---------------------------------------------------------------------------
    def prepare(self, data: bytes, filename: str | None) -> ParsedUnits:
        """Parse, segment and chunk (no writes)."""
        return self._units(parse_bytes(data, filename))

    def _units(self, parsed: ParsedDocument) -> ParsedUnits:
        """Sentences of the parsed text and their chunks (which never cross its pages or sections)."""
        sentences = split_sentences(parsed.text, max_chars=self.settings.max_sentence_chars)
        if not sentences:
            raise EmptyDocumentError("the document has no sentences")
        counts = self.embedder.count_tokens([parsed.text[s.start : s.end] for s in sentences])
        chunks = sentence_chunks(sentences, counts, target_tokens=self.settings.chunk_tokens,
                                 starts=chunk_starts(sentences, _breaks(parsed)))
        return ParsedUnits(parsed.text, sentences, chunks, parsed.sections or ())

    def ingest_bytes(
        self,
        data: bytes,
        filename: str | None = None,
        *,
        title: str | None = None,
        progress: Progress | None = None,
        detail: Callable[[str], None] | None = None,
    ) -> IngestResult:
        """Store a document; identical bytes return the existing id without a second copy.

        ``progress(stage, fraction)`` hears of each stage and of the fraction done overall;
        ``detail`` of where the parse is, in words (a PDF's ``"page 37 of 1000"``)."""
        t0 = time.perf_counter()
        report = progress or (lambda stage, frac: None)
        if len(data) > self.settings.max_file_bytes:
            raise FileTooLargeError(
                f"file is {len(data)} bytes; the limit is {self.settings.max_file_bytes} "
                "(set LONGRAG_MAX_FILE_BYTES to change it)"
            )
        sha = hashlib.sha256(data).hexdigest()
        doc_id = sha[:16]
        existing = self.store.doc_by_sha(sha)
        if existing:
            report("done", 1.0)
            return IngestResult(existing.doc_id, existing.title, existing.filename, False,
                                existing.n_sentences, existing.n_chunks, time.perf_counter() - t0)
        report("parse", 0.05)
        # page by page (PDF) within the parse stage's share
        parsed = parse_bytes(data, filename, progress=lambda frac: report("parse", round(0.05 + 0.1 * frac, 4)),
                             detail=detail)
        report("segment", 0.15)
        units = self._units(parsed)
        sentences, chunks = units.sentences, units.chunks
        report("embed", 0.3)
        vectors: dict[str, np.ndarray] = {}
        for i, (kind, build) in enumerate(self.vector_builders.items()):
            vectors[kind] = build(self.embedder, units)
            report("embed", 0.3 + 0.55 * (i + 1) / len(self.vector_builders))
        report("index", 0.9)
        name = title or (PurePath(filename).name if filename else None) or parsed.text.strip().splitlines()[0][:80]
        with self._write_lock():
            again = self.store.doc_by_sha(sha)  # a concurrent writer may have won the race
            if again:
                report("done", 1.0)
                return IngestResult(again.doc_id, again.title, again.filename, False,
                                    again.n_sentences, again.n_chunks, time.perf_counter() - t0)
            with self.store.transaction() as conn:
                chunk_ids = self.store.insert_document(
                    conn, doc_id=doc_id, sha256=sha, title=name, filename=filename, kind=parsed.kind,
                    n_bytes=len(data), text=parsed.text, sentences=sentences, chunks=chunks,
                )
                for kind, vecs in vectors.items():
                    self.store.insert_vectors(conn, kind, chunk_ids, vecs)
                for art, blob in parsed.artifacts().items():  # PDF page starts, headings: Corpus.locate
                    self.store.put_artifact(doc_id, art, blob, conn)
                generation = self.store.bump_generation(conn)
            self._apply_to_indexes(lambda index, kind: index.add(np.asarray(chunk_ids), vectors[kind]), vectors,
                                   generation)
        for i, hook in enumerate(self.ingest_hooks):
            report("cache", 0.92 + 0.07 * i / len(self.ingest_hooks))
            hook(self, doc_id, units)
        report("done", 1.0)
        return IngestResult(doc_id, name, filename, True, len(sentences), len(chunks), time.perf_counter() - t0)

    def ingest_path(self, path: Path, *, progress: Progress | None = None) -> IngestResult:
        if not path.is_file():
            raise NotFoundError(f"no such file: {path}")
        size = path.stat().st_size
        if size > self.settings.max_file_bytes:
            raise FileTooLargeError(
                f"{path} is {size} bytes; the limit is {self.settings.max_file_bytes} "
                "(set LONGRAG_MAX_FILE_BYTES to change it)"
            )
        return self.ingest_bytes(path.read_bytes(), path.name, progress=progress)

    def _apply_to_indexes(self, change: Callable[[VectorIndex, str], object], kinds: Sequence[str] | dict,
                          generation: int) -> None:
        """Apply a change (committed as ``generation``, under the write lock) to each kind's index file.

        The file is changed in place when it reflects the generation just before this write;
        one that lags further (another host wrote meanwhile) is rebuilt from the database."""
        for kind in kinds:
            path = self._index_path(kind)
            index = None
            if path.exists() and self._index_generation(kind) == generation - 1:
                try:
                    index = VectorIndex.load(path, self.embedder.dim)
                    change(index, kind)
                    self._save_index(index, kind, generation)
                except (RuntimeError, ValueError):
                    index = None
            if index is None:
                index = self._load_or_rebuild(kind)
            self._indexes[kind] = (generation, index)

    # -- reading -----------------------------------------------------------------------------
    def list(self) -> list[DocumentInfo]:
        return self.store.list()

    def get(self, doc_id: str) -> DocumentInfo:
        return self.store.get(doc_id)

    def text(self, doc_id: str) -> str:
        return self.store.text(doc_id)

    def locate(self, doc_id: str, offset: int) -> tuple[int | None, str | None]:
        """The 1-based page and the heading path at ``offset`` of a document's text (None: the
        format has none, or the document was ingested before they were stored)."""
        from longrag.retrieval.parse import locate

        return locate(self.store.get_artifact(doc_id, "pages"), self.store.get_artifact(doc_id, "sections"), offset)

    def sections(self, doc_id: str) -> tuple[tuple[int, str], ...]:
        """Where each section of a document's text starts, with its heading path (empty: the
        format has none, or the document was ingested before they were stored)."""
        raw = self.store.get_artifact(doc_id, "sections")
        return tuple((int(o), str(p)) for o, p in json.loads(raw)) if raw else ()

    def delete(self, doc_id: str) -> DocumentInfo:
        with self._write_lock():
            info = self.store.get(doc_id)
            with self.store.transaction() as conn:
                chunk_ids = self.store.delete_document(conn, doc_id)
                generation = self.store.bump_generation(conn)
            kinds = [k for k in self.vector_builders]
            self._apply_to_indexes(lambda index, kind: index.remove(np.asarray(chunk_ids, np.int64)), kinds,
                                   generation)
            for name in DOC_CACHE_DIRS:  # per-document file caches (SentenceKV state, ...)
                shutil.rmtree(self.settings.data_dir / name / doc_id, ignore_errors=True)
        return info

    def check_docs(self, doc_ids: Sequence[str] | None) -> list[str] | None:
        if not doc_ids:
            return None
        for d in doc_ids:
            if not self.store.exists(d):
                raise NotFoundError(f"no document with id {d!r}")
        return list(doc_ids)

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        doc_ids: Sequence[str] | None = None,
        kind: str | None = None,
        retriever: str | None = None,
        link_hop: int | None = None,
    ) -> list[Hit]:
        """Search chunks; ``doc_ids`` restricts it to those documents.

        Args:
            retriever: ``chunk`` (dense, chunk-only vectors) | ``situated`` (dense, situated
                vectors) | ``bm25`` | ``hybrid`` (RRF of situated and BM25); None: the
                configured default (``Settings.retriever``).
            kind: dense search over this stored vector kind (overrides ``retriever``).
            link_hop: read this many top chunks for titles of other documents and place those
                documents' first chunks after the best ``Settings.link_keep`` hits
                (``longrag.retrieval.links``); 0: off; None: ``Settings.link_hop``.
        """
        if not query or not query.strip():
            raise InvalidRequestError("the query is empty")
        if k <= 0:
            raise InvalidRequestError("k must be positive")
        retriever = retriever or self.settings.retriever
        if kind is None and retriever not in RETRIEVERS:
            raise InvalidRequestError(f"unknown retriever {retriever!r}; choose from {list(RETRIEVERS)}")
        link_hop = self.settings.link_hop if link_hop is None else link_hop
        if link_hop < 0 or self.settings.link_keep < 0:
            raise InvalidRequestError("link_hop and LONGRAG_LINK_KEEP must be >= 0")
        docs = self.check_docs(doc_ids)
        allowed = self.store.chunk_ids_for(docs) if docs else None
        if allowed is not None and not len(allowed):
            return []
        if kind is not None or retriever in DENSE_RETRIEVERS:
            ids, scores = self._dense(query, k, allowed, kind or self._dense_kind(retriever))
        else:
            lexical = self._bm25().search(query, k if retriever == "bm25" else max(50, 5 * k), allowed_ids=allowed)
            if retriever == "bm25":
                ids, scores = [h.id for h in lexical], [h.score for h in lexical]
            else:
                from longrag.retrieval.fusion import reciprocal_rank_fusion

                dense_ids, _ = self._dense(query, max(50, 5 * k), allowed, self._dense_kind("situated"))
                fused = reciprocal_rank_fusion([list(dense_ids), [h.id for h in lexical]], k=self.settings.rrf_k)
                ids, scores = [i for i, _ in fused[:k]], [s for _, s in fused[:k]]
        hits = self.hits(ids, scores)
        if not link_hop or (docs is not None and len(docs) == 1):  # one document links nowhere
            return hits
        return self._follow_links(hits, k, link_hop, None if docs is None else set(docs))

    def _follow_links(self, hits: list[Hit], k: int, read: int, docs: set[str] | None) -> list[Hit]:
        """One title-link hop over ``hits`` (docs/situated.md); a linked chunk takes the score of
        the hit it is placed before, so scores stay non-increasing."""
        with self._mutex:
            gen = self.store.generation()
            if self._titles is None or self._titles[0] != gen:
                links = TitleLinks((d.doc_id, d.title) for d in self.store.list())
                self._titles = (gen, links, self.store.lead_chunks())
            _, links, leads = self._titles
        if not len(links):
            return hits
        by_id = {h.chunk_id: h for h in hits}
        base = set(by_id)
        order = link_hop(
            [h.chunk_id for h in hits], text_of=lambda c: by_id[c].text, doc_of=lambda c: by_id[c].doc_id,
            lead_of=lambda d: leads.get(d) if docs is None or d in docs else None,
            links=links, read=read, keep=self.settings.link_keep)[:k]
        by_id.update({h.chunk_id: h for h in self.hits([c for c in order if c not in base], [0.0] * k)})
        out: list[Hit] = []
        for pos, c in enumerate(order):
            h = by_id[c]
            if c not in base:
                after = (by_id[x].score for x in order[pos + 1 :] if x in base)
                h = replace(h, score=next(after, out[-1].score if out else h.score))
            out.append(h)
        return out

    def _dense_kind(self, retriever: str) -> str:
        """``situated`` when every chunk has a situated vector, else ``chunk`` (older stores)."""
        if retriever == "situated":
            if "situated" in self.vector_builders and (
                self.store.count_vectors("situated") == self.store.count_vectors("chunk")
            ):
                return "situated"
            log.warning("situated vectors are missing for some chunks; using chunk-only vectors")
        return "chunk"

    def _dense(self, query: str, k: int, allowed: np.ndarray | None, kind: str) -> tuple[list[int], list[float]]:
        index = self.index(kind)
        scores, ids = index.search(self.embedder.encode([query]), k, allowed_ids=allowed)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if int(i) >= 0]
        return [i for i, _ in pairs], [s for _, s in pairs]

    def _bm25(self):
        """BM25 over every stored chunk, each indexed with its document's first sentence and its
        heading path (situated text, docs/situated.md); rebuilt in memory when the corpus changes."""
        from longrag.retrieval.bm25 import BM25Index
        from longrag.retrieval.parse import section_at
        from longrag.retrieval.situated import UnitDoc, situated_texts

        with self._mutex:
            gen = self.store.generation()
            if self._lexical is None or self._lexical[0] != gen:
                ids, texts = [], []
                for info in self.store.list():
                    text = self.store.text(info.doc_id)
                    rows = self.store.chunks(info.doc_id)
                    first = self.store.sentences(info.doc_id)[:1]
                    lead = (first[0].start, first[0].end) if first else None
                    ids.extend(cid for cid, _ in rows)
                    sections = self.sections(info.doc_id)
                    paths = section_at(sections, [c.start for _, c in rows]) if sections else None
                    texts.extend(situated_texts(UnitDoc(text, [(c.start, c.end) for _, c in rows], sections=paths),
                                                lead_chars=lead))
                self._lexical = (gen, BM25Index(ids, texts))
            return self._lexical[1]

    def as_retriever(self, *, k: int = 10, doc_ids: Sequence[str] | None = None, retriever: str | None = None):
        """This corpus as a LangChain ``BaseRetriever``."""
        from longrag.retrieval.langchain import LongragRetriever

        return LongragRetriever(search=self.search, k=k, doc_ids=doc_ids, retriever=retriever)

    def hits(self, ids: Sequence[int], scores: Sequence[float]) -> list[Hit]:
        pairs = [(int(i), float(s)) for i, s in zip(ids, scores) if int(i) >= 0]
        rows = self.store.chunk_rows([i for i, _ in pairs])  # a deleted document's chunks have none
        return [Hit(r.doc_id, r.start, r.end, self._texts.get(r.doc_id, self.store.text)[r.start : r.end], score, cid)
                for cid, score in pairs if (r := rows.get(cid))]
