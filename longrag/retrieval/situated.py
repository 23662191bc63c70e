"""Situated embeddings (after SitEmb, arXiv 2508.01959): short units embedded in their context.

Every unit (a sentence or a sentence-aligned chunk) gets two vectors: the *chunk-only* vector
``c`` (the unit's text alone) and a *situated* vector ``s`` that also reflects its context
window (the neighbouring units inside its paragraph, plus the document's lead units and title
when asked). Retrieval scores ``sim(q, s) + beta * sim(q, c)`` (the paper's residual); with
unit-norm ``s`` and ``c`` that is one inner product with ``(s + beta * c) / (1 + beta)``, which
is what :meth:`SituatedVectors.combined` returns and what the product indexes.

Strategies (``SituatedConfig.strategy``):

``residual``
    ``s = normalize(c + alpha * x)`` with ``x`` the context-window vector: either the encoded
    window text (``context="encode"``, one extra encoder pass over window texts) or the mean of
    the neighbours' chunk-only vectors (``context="pool"``, no extra encoder pass).
``late``
    Late chunking: the document is encoded once in windows of up to ``late_max_tokens`` word
    pieces (sliding, with ``late_overlap`` tokens of overlap, each token taking its state from
    the window where it is most central); ``s`` = the mean of the token states of the unit's
    span (located with the tokenizer's offset mapping), normalised.
``trained``
    A small adapter ``s = normalize(c + sum_f W_f x_f)`` over context features (pooled
    neighbours, lead, late-chunked vector, ...), trained by ``bench/train_situated.py`` and
    loaded from ``longrag/retrieval/weights/``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from longrag.retrieval.embed import Embedder

if TYPE_CHECKING:
    from longrag.config import Settings

log = logging.getLogger(__name__)

STRATEGIES = ("residual", "late", "trained")
FEATURES = ("pool", "lead", "context", "late", "title")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "situated_adapter.npz"

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True, slots=True)
class UnitDoc:
    """One document: its text, the units to embed as ``(start, end)`` spans, an optional title
    and, per unit, the heading path of the section it lies in (``""``: none)."""

    text: str
    units: Sequence[tuple[int, int]]
    title: str | None = None
    sections: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class SituatedConfig:
    """How situated vectors are computed (see the module docstring).

    Attributes:
        strategy: ``residual`` | ``late`` | ``trained``.
        window: neighbouring units on each side in the context window.
        paragraph: keep the window inside the unit's paragraph (blank-line separated).
        lead: the document's first ``lead`` units join every unit's context.
        use_title: add the document title (when given) to the context.
        alpha: weight of the context vector in ``residual``.
        beta: weight of ``sim(q, c)`` in the score.
        context: ``pool`` or ``encode`` (how ``residual`` gets its context vector).
        late_max_tokens: word pieces per late-chunking window, special tokens included
            (MiniLM's positions go to 512; its sentence-transformers limit is 256).
        late_overlap: tokens shared by consecutive late-chunking windows.
        weights: the adapter file for ``trained`` (default: the committed one).
    """

    strategy: str = "residual"
    window: int = 2
    paragraph: bool = True
    lead: int = 1
    use_title: bool = False
    alpha: float = 0.5
    beta: float = 0.5
    context: str = "pool"
    late_max_tokens: int = 256
    late_overlap: int = 64
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown situated strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.context not in ("pool", "encode"):
            raise ValueError("context must be 'pool' or 'encode'")
        if self.window < 0 or self.lead < 0 or self.beta < 0:
            raise ValueError("window, lead and beta must be >= 0")
        if self.late_max_tokens < 16 or not 0 <= self.late_overlap < self.late_max_tokens // 2:
            raise ValueError("late_max_tokens must be >= 16 and late_overlap < late_max_tokens / 2")


@dataclass
class SituatedVectors:
    """Chunk-only and situated vectors of one document's units, each ``(n_units, dim)``."""

    chunk: np.ndarray
    situated: np.ndarray
    beta: float = 0.5

    def combined(self, beta: float | None = None) -> np.ndarray:
        """``(s + beta * c) / (1 + beta)``: its inner product with a unit query vector is the
        residual score ``(sim(q, s) + beta * sim(q, c)) / (1 + beta)``."""
        b = self.beta if beta is None else beta
        return np.ascontiguousarray((self.situated + b * self.chunk) / (1.0 + b), dtype=np.float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 1e-12, norms, 1.0)).astype(np.float32)


def paragraph_ids(text: str, units: Sequence[tuple[int, int]]) -> list[int]:
    """The paragraph (blank-line separated block) each unit starts in."""
    breaks = [m.end() for m in _PARAGRAPH_BREAK.finditer(text)]
    return [int(np.searchsorted(breaks, start, side="right")) for start, _ in units]


def neighbours(text: str, units: Sequence[tuple[int, int]], cfg: SituatedConfig) -> list[list[int]]:
    """For each unit, the indices of its context units (window and lead), itself excluded."""
    n = len(units)
    paras = paragraph_ids(text, units) if cfg.paragraph else [0] * n
    lead = list(range(min(cfg.lead, n)))
    out = []
    for i in range(n):
        ctx = [j for j in range(max(0, i - cfg.window), min(n, i + cfg.window + 1))
               if j != i and paras[j] == paras[i]]
        ctx = [j for j in lead if j != i and j not in ctx] + ctx
        out.append(ctx)
    return out


@dataclass
class Adapter:
    """``s = normalize(c + sum_f x_f @ W_f.T)``; weights per feature name, float32."""

    features: list[str]
    matrices: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def apply(self, chunk: np.ndarray, feats: dict[str, np.ndarray]) -> np.ndarray:
        out = chunk.astype(np.float32).copy()
        for f in self.features:
            out += feats[f] @ self.matrices[f].T
        return _normalize(out)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"W_{f}": m.astype(np.float16) for f, m in self.matrices.items()}
        meta = json.dumps({"features": self.features, **self.meta})
        np.savez_compressed(path, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)

    @classmethod
    def load(cls, path: Path) -> Adapter:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            feats = list(meta.pop("features"))
            mats = {f: z[f"W_{f}"].astype(np.float32) for f in feats}
        return cls(feats, mats, meta)


class SituatedEmbedder:
    """Computes chunk-only and situated vectors for documents' units.

    Args:
        embedder: the product's :class:`Embedder` (its model's transformer is used directly for
            late chunking).
        config: the strategy and its options.
    """

    def __init__(self, embedder: Embedder, config: SituatedConfig | None = None) -> None:
        self.embedder = embedder
        self.config = config or SituatedConfig()
        self._adapter: Adapter | None = None

    # -- public ------------------------------------------------------------------------------
    @property
    def adapter(self) -> Adapter:
        if self._adapter is None:
            path = Path(self.config.weights) if self.config.weights else DEFAULT_WEIGHTS
            if not path.exists():
                raise FileNotFoundError(
                    f"no situated adapter at {path}; train one with `python -m bench.train_situated`"
                )
            self._adapter = Adapter.load(path)
        return self._adapter

    def embed(self, doc: UnitDoc) -> SituatedVectors:
        return self.embed_many([doc])[0]

    def embed_many(
        self, docs: Sequence[UnitDoc], *, chunk_vectors: Sequence[np.ndarray] | None = None
    ) -> list[SituatedVectors]:
        """Vectors for every unit of every document (encoder calls batched across documents).

        Args:
            docs: the documents.
            chunk_vectors: chunk-only vectors already computed (one array per document).
        """
        cfg = self.config
        chunks = list(chunk_vectors) if chunk_vectors is not None else self.chunk_vectors(docs)
        if cfg.strategy == "residual":
            ctx = self.feature("pool" if cfg.context == "pool" else "context", docs, chunks)
            sit = [_normalize(c + cfg.alpha * x) if len(c) else c for c, x in zip(chunks, ctx)]
        elif cfg.strategy == "late":
            sit = self.feature("late", docs, chunks)
        else:
            adapter = self.adapter
            feats = {f: self.feature(f, docs, chunks) for f in adapter.features}
            sit = [adapter.apply(c, {f: feats[f][d] for f in adapter.features}) if len(c) else c
                   for d, c in enumerate(chunks)]
        return [self._headed(d, SituatedVectors(c, s, cfg.beta)) for d, c, s in zip(docs, chunks, sit)]

    def chunk_vectors(self, docs: Sequence[UnitDoc]) -> list[np.ndarray]:
        texts = [d.text[a:b] for d in docs for a, b in d.units]
        return _split(self.embedder.encode(texts), docs)

    # -- context features (one array per document, rows aligned with its units) ---------------
    def feature(self, name: str, docs: Sequence[UnitDoc], chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """A context feature: ``pool`` | ``lead`` | ``context`` | ``late`` | ``title``."""
        if name == "pool":
            titles = self._title(docs) if self.config.use_title else [None] * len(docs)
            return [self._pool(d, c, t) for d, c, t in zip(docs, chunks, titles)]
        if name == "lead":
            return [self._lead(d, c) for d, c in zip(docs, chunks)]
        if name == "title":
            return self._title(docs)
        if name == "context":
            return self._encoded_context(docs)
        if name == "late":
            return self._late(docs, chunks)
        raise ValueError(f"unknown feature {name!r}; choose from {FEATURES}")

    def _pool(self, doc: UnitDoc, chunk: np.ndarray, title: np.ndarray | None) -> np.ndarray:
        """Sum of the context units' chunk-only vectors (and the title's), normalised."""
        out = np.zeros_like(chunk)
        for i, ctx in enumerate(neighbours(doc.text, doc.units, self.config)):
            acc = chunk[ctx].sum(0) if ctx else np.zeros(chunk.shape[1], np.float32)
            if title is not None:
                acc = acc + title[i]
            out[i] = acc
        return _normalize(out)

    def _lead(self, doc: UnitDoc, chunk: np.ndarray) -> np.ndarray:
        out = np.zeros_like(chunk)
        k = min(self.config.lead, len(chunk))
        if k:
            out[k:] = chunk[:k].mean(0)
        return _normalize(out)

    def _title(self, docs: Sequence[UnitDoc]) -> list[np.ndarray]:
        titles = [d.title or "" for d in docs]
        wanted = sorted({t for t in titles if t.strip()})
        vecs = dict(zip(wanted, self.embedder.encode(wanted)))
        zero = np.zeros(self.embedder.dim, np.float32)
        return [np.tile(vecs.get(t, zero), (len(d.units), 1)).astype(np.float32) for d, t in zip(docs, titles)]

    def _headed(self, doc: UnitDoc, vecs: SituatedVectors) -> SituatedVectors:
        """A unit under a heading is read with its heading path in front ("Ingrid Solberg. She
        joined in 2009."): that one encoding stands for both its text and its context, so its
        combined vector is that encoding. Units outside every section keep their vectors."""
        headed = [i for i, p in enumerate(doc.sections or ()) if p.strip()]
        if not headed:
            return vecs
        texts = [f"{doc.sections[i]}. {doc.text[doc.units[i][0] : doc.units[i][1]]}" for i in headed]
        h = self.embedder.encode(texts).astype(np.float32)
        chunk, situated = vecs.chunk.copy(), vecs.situated.copy()
        chunk[headed] = situated[headed] = h
        return SituatedVectors(chunk, situated, vecs.beta)

    def context_texts(self, doc: UnitDoc) -> list[str]:
        """The window text of each unit (title, lead units, then the contiguous window)."""
        cfg = self.config
        out = []
        title = f"{doc.title}.\n" if cfg.use_title and doc.title else ""
        for i, ctx in enumerate(neighbours(doc.text, doc.units, cfg)):
            head = title
            lead = [j for j in ctx if j < cfg.lead and abs(j - i) > cfg.window]
            near = sorted({*(j for j in ctx if j not in lead), i})
            parts = [doc.text[doc.units[j][0] : doc.units[j][1]] for j in lead]
            parts.append(doc.text[doc.units[near[0]][0] : doc.units[near[-1]][1]])
            out.append(head + " ".join(parts))
        return out

    def _encoded_context(self, docs: Sequence[UnitDoc]) -> list[np.ndarray]:
        texts = [t for d in docs for t in self.context_texts(d)]
        return _split(self.embedder.encode(texts), docs)

    # -- late chunking ------------------------------------------------------------------------
    def _late(self, docs: Sequence[UnitDoc], chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        cfg = self.config
        model = self.embedder.model
        tok = model.tokenizer
        transformer = _hf_transformer(model)
        limit = int(getattr(transformer.config, "max_position_embeddings", cfg.late_max_tokens))
        max_tokens = min(cfg.late_max_tokens, limit)
        cls_id, sep_id, pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id or 0

        # 1. Cut each document into windows of token ids; remember where each token's best state is.
        windows: list[list[int]] = []
        plans = []  # per doc: (offsets, owner window index per token, position in that window)
        for doc in docs:
            if not len(doc.units):
                plans.append(None)
                continue
            first, last = doc.units[0][0], doc.units[-1][1]
            enc = tok(doc.text[first:last], add_special_tokens=False, return_offsets_mapping=True,
                      verbose=False)
            ids = enc["input_ids"]
            offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2) + first
            prefix: list[int] = []
            if cfg.use_title and doc.title:
                prefix = tok(doc.title + ".", add_special_tokens=False, verbose=False)["input_ids"][:32]
            body = max_tokens - 2 - len(prefix)
            step = body - cfg.late_overlap
            owner = np.full(len(ids), -1, np.int64)
            where = np.zeros(len(ids), np.int64)
            best = np.full(len(ids), np.inf)
            start = 0
            while True:
                end = min(len(ids), start + body)
                w = len(windows)
                windows.append([cls_id, *prefix, *ids[start:end], sep_id])
                centre = (start + end - 1) / 2
                for t in range(start, end):
                    d = abs(t - centre)
                    if d < best[t]:
                        best[t], owner[t], where[t] = d, w, 1 + len(prefix) + t - start
                if end >= len(ids):
                    break
                start += step
            plans.append((offsets, owner, where))

        # 2. Encode the windows in length-sorted batches.
        states: list[np.ndarray | None] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        bs = max(1, (self.embedder.batch_size or 32) // max(1, max_tokens // 128))
        device = next(transformer.parameters()).device
        with torch.inference_mode():
            for b in range(0, len(order), bs):
                idx = order[b : b + bs]
                width = max(len(windows[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    input_ids[r, : len(windows[i])] = torch.tensor(windows[i])
                    mask[r, : len(windows[i])] = 1
                out = transformer(input_ids=input_ids.to(device), attention_mask=mask.to(device))
                hidden = out.last_hidden_state.float().cpu().numpy()
                for r, i in enumerate(idx):
                    states[i] = hidden[r, : len(windows[i])]

        # 3. Mean-pool each unit's tokens; units without tokens keep their chunk-only vector.
        result = []
        for doc, chunk, plan in zip(docs, chunks, plans):
            out = chunk.copy()
            if plan is not None:
                offsets, owner, where = plan
                for u, (a, b) in enumerate(doc.units):
                    sel = np.nonzero((offsets[:, 0] < b) & (offsets[:, 1] > a) & (offsets[:, 1] > offsets[:, 0]))[0]
                    if len(sel):
                        out[u] = np.mean([states[owner[t]][where[t]] for t in sel], axis=0)
            result.append(_normalize(out))
        return result


def _hf_transformer(model):
    """The Hugging Face transformer inside a SentenceTransformer (or a wrapper around one)."""
    st = getattr(model, "_st", model)  # embed.OnnxSentenceEncoder keeps the torch model there
    try:
        return st[0].auto_model
    except (TypeError, IndexError, AttributeError) as exc:
        raise ValueError("late chunking needs a sentence-transformers model with a transformer") from exc


def _split(vectors: np.ndarray, docs: Sequence[UnitDoc]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *(len(d.units) for d in docs)])
    return [vectors[bounds[i] : bounds[i + 1]] for i in range(len(docs))]


def situated_texts(doc: UnitDoc, *, lead_chars: tuple[int, int] | None = None, use_title: bool = False) -> list[str]:
    """Unit texts prefixed with the document's lead and the unit's heading path (for lexical
    retrieval of situated units).

    Like contextual retrieval, a unit that says "He moved there" is indexed together with the
    sentence that names "he" and the heading it sits under (``doc.sections``; a unit that begins
    with its heading gets none). The lead is ``text[lead_chars[0]:lead_chars[1]]`` (default: the
    first unit); the lead unit itself gets no lead prefix.

    Args:
        doc: the document and its units.
        lead_chars: the span of the lead (in the product: the document's first sentence).
        use_title: also prefix the document title, when it has one.
    """
    from longrag.retrieval.parse import opens_section

    if not len(doc.units):
        return []
    a, b = lead_chars if lead_chars is not None else doc.units[0]
    lead = doc.text[a:b]
    head = f"{doc.title}. " if use_title and doc.title else ""
    out = []
    for i, (ua, ub) in enumerate(doc.units):
        unit = doc.text[ua:ub]
        prefix = "" if ua <= a < ub or (ua >= a and ub <= b) else lead + " "
        path = doc.sections[i] if doc.sections else ""
        section = f"{path}. " if path.strip() and not opens_section(unit, path) else ""
        out.append(head + prefix + section + unit)
    return out


def config_from_settings(settings: Settings) -> SituatedConfig:
    """A :class:`SituatedConfig` from the product's settings (``LONGRAG_SITUATED_*``); the
    options without a setting (``paragraph``, ``use_title``, ``late_overlap``) keep their defaults."""
    weights = settings.situated.weights
    return SituatedConfig(
        strategy=settings.situated.strategy,
        context=settings.situated.context,
        window=settings.situated.window,
        lead=settings.situated.lead,
        alpha=settings.situated.alpha,
        beta=settings.situated.beta,
        late_max_tokens=settings.situated.late_max_tokens,
        weights=str(weights) if weights else None,
    )


class SituatedVectorBuilder:
    """The corpus's ``chunk`` and ``situated`` vector builders, sharing one encoder pass.

    Both take ``(embedder, units)`` where ``units`` has ``.text``, ``.chunks`` (objects with
    ``start``/``end``) and optionally ``.sections`` (``(offset, heading path)`` pairs), and
    return one vector per chunk. ``situated`` reuses the chunk-only
    vectors that ``chunk`` just computed for the same ``units`` object, so situating costs no
    second encoding of the chunks.
    """

    def __init__(self, config: SituatedConfig) -> None:
        self.config = config
        self._last: tuple[object, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._situated: SituatedEmbedder | None = None

    def chunk(self, embedder: Embedder, units) -> np.ndarray:
        vecs = embedder.encode([units.text[c.start : c.end] for c in units.chunks])
        with self._lock:
            self._last = (units, vecs)
        return vecs

    def situated(self, embedder: Embedder, units) -> np.ndarray:
        from longrag.retrieval.parse import section_at

        sections = getattr(units, "sections", None)
        doc = UnitDoc(units.text, [(c.start, c.end) for c in units.chunks],
                      sections=section_at(sections, [c.start for c in units.chunks]) if sections else None)
        with self._lock:
            last = self._last
        chunk = last[1] if last is not None and last[0] is units else None
        if chunk is None:
            chunk = self.chunk(embedder, units)
        with self._lock:
            if self._situated is None or self._situated.embedder is not embedder:
                self._situated = SituatedEmbedder(embedder, self.config)
            emb = self._situated
        return emb.embed_many([doc], chunk_vectors=[chunk])[0].combined()
