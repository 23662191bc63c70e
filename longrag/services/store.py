"""The store: documents, their parsed text, sentences, chunks, chunk vectors and artifacts.

The database (:mod:`longrag.services.db`: embedded SQLite or PostgreSQL) is the source of
truth; each host's FAISS files are caches rebuilt from the ``vectors`` table whenever they
disagree with it (another host wrote, or a crash fell between the two writes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from longrag.errors import NotFoundError
from longrag.retrieval.types import Chunk, Sentence
from longrag.services.db import Database, Executor

@dataclass(frozen=True, slots=True)
class DocumentInfo:
    doc_id: str
    title: str
    filename: str | None
    kind: str
    n_bytes: int
    n_chars: int
    n_sentences: int
    n_chunks: int
    created_at: float


@dataclass(frozen=True, slots=True)
class ChunkRow:
    chunk_id: int
    doc_id: str
    start: int
    end: int


_DOC_COLS = "doc_id, title, filename, kind, n_bytes, n_chars, n_sentences, n_chunks, created_at"


class Store:
    """Thin typed access to the documents' tables of the shared database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn = db

    def transaction(self) -> AbstractContextManager[Executor]:
        return self.db.transaction()

    def write_lock(self) -> AbstractContextManager[None]:
        """The corpus writers' lock, across processes and hosts."""
        return self.db.write_lock()

    # -- documents -----------------------------------------------------------------------
    def doc_by_sha(self, sha256: str) -> DocumentInfo | None:
        row = self._conn.execute(f"SELECT {_DOC_COLS} FROM documents WHERE sha256=?", (sha256,)).fetchone()
        return DocumentInfo(*row) if row else None

    def get(self, doc_id: str) -> DocumentInfo:
        row = self._conn.execute(f"SELECT {_DOC_COLS} FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no document with id {doc_id!r}")
        return DocumentInfo(*row)

    def exists(self, doc_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM documents WHERE doc_id=?", (doc_id,)).fetchone() is not None

    def list(self) -> list[DocumentInfo]:
        rows = self._conn.execute(f"SELECT {_DOC_COLS} FROM documents ORDER BY created_at, doc_id")
        return [DocumentInfo(*r) for r in rows]

    def text(self, doc_id: str) -> str:
        row = self._conn.execute("SELECT text FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no document with id {doc_id!r}")
        return row[0]

    def sentences(self, doc_id: str) -> list[Sentence]:
        rows = self._conn.execute(
            'SELECT idx, start, "end" FROM sentences WHERE doc_id=? ORDER BY idx', (doc_id,)
        )
        return [Sentence(*r) for r in rows]

    def chunks(self, doc_id: str) -> list[tuple[int, Chunk]]:
        rows = self._conn.execute(
            'SELECT chunk_id, idx, start, "end", first_sentence, last_sentence FROM chunks '
            "WHERE doc_id=? ORDER BY idx",
            (doc_id,),
        )
        return [(r[0], Chunk(*r[1:])) for r in rows]

    def chunk_rows(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRow]:
        out: dict[int, ChunkRow] = {}
        ids = [int(i) for i in chunk_ids]
        for i in range(0, len(ids), 900):
            part = ids[i : i + 900]
            marks = ",".join("?" * len(part))
            q = f'SELECT chunk_id, doc_id, start, "end" FROM chunks WHERE chunk_id IN ({marks})'
            for r in self._conn.execute(q, part):
                out[r[0]] = ChunkRow(*r)
        return out

    def lead_chunks(self) -> dict[str, int]:
        """Each document's first chunk id."""
        return dict(self._conn.execute("SELECT doc_id, chunk_id FROM chunks WHERE idx=0"))

    def chunk_ids_for(self, doc_ids: Iterable[str]) -> np.ndarray:
        ids: list[int] = []
        for d in doc_ids:
            ids.extend(r[0] for r in self._conn.execute("SELECT chunk_id FROM chunks WHERE doc_id=?", (d,)))
        return np.asarray(ids, dtype=np.int64)

    def insert_document(
        self,
        conn: Executor,
        *,
        doc_id: str,
        sha256: str,
        title: str,
        filename: str | None,
        kind: str,
        n_bytes: int,
        text: str,
        sentences: Sequence[Sentence],
        chunks: Sequence[Chunk],
    ) -> list[int]:
        """Insert a document with its sentences and chunks; return the new chunk ids."""
        conn.execute(
            "INSERT INTO documents (doc_id, sha256, title, filename, kind, n_bytes, n_chars, "
            "n_sentences, n_chunks, created_at, text) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (doc_id, sha256, title, filename, kind, n_bytes, len(text), len(sentences), len(chunks), time.time(), text),
        )
        conn.executemany(
            'INSERT INTO sentences (doc_id, idx, start, "end") VALUES (?,?,?,?)',
            [(doc_id, s.index, s.start, s.end) for s in sentences],
        )
        ids = []
        for c in chunks:
            row = conn.execute(
                'INSERT INTO chunks (doc_id, idx, start, "end", first_sentence, last_sentence) '
                "VALUES (?,?,?,?,?,?) RETURNING chunk_id",
                (doc_id, c.index, c.start, c.end, c.first_sentence, c.last_sentence),
            ).fetchone()
            ids.append(int(row[0]))
        return ids

    @staticmethod
    def insert_vectors(conn: Executor, kind: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        conn.executemany(
            "INSERT INTO vectors (chunk_id, kind, vec) VALUES (?,?,?) "
            "ON CONFLICT (chunk_id, kind) DO UPDATE SET vec = excluded.vec",
            [(int(cid), kind, vectors[i].tobytes()) for i, cid in enumerate(chunk_ids)],
        )

    def vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """All (chunk ids, vectors) of one kind, in chunk id order."""
        rows = self._conn.execute("SELECT chunk_id, vec FROM vectors WHERE kind=? ORDER BY chunk_id", (kind,)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return ids, vecs

    def vector_kinds(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT kind FROM vectors")]

    def count_vectors(self, kind: str) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM vectors WHERE kind=?", (kind,)).fetchone()[0])

    def delete_document(self, conn: Executor, doc_id: str) -> list[int]:
        """Delete a document and everything hanging off it; return its chunk ids."""
        ids = [r[0] for r in conn.execute("SELECT chunk_id FROM chunks WHERE doc_id=?", (doc_id,))]
        conn.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        return ids

    # -- per-document artifacts (caches computed at ingestion by later techniques) ----------
    def put_artifact(self, doc_id: str, name: str, data: bytes, conn: Executor | None = None) -> None:
        """Store (or replace) a document's artifact, in the writer's transaction ``conn`` if given."""
        (conn or self._conn).execute(
            "INSERT INTO artifacts (doc_id, name, data) VALUES (?,?,?) "
            "ON CONFLICT (doc_id, name) DO UPDATE SET data = excluded.data", (doc_id, name, data)
        )

    def get_artifact(self, doc_id: str, name: str) -> bytes | None:
        row = self._conn.execute("SELECT data FROM artifacts WHERE doc_id=? AND name=?", (doc_id, name)).fetchone()
        return bytes(row[0]) if row else None

    # -- generation counter: bumps on every change so other processes reload indexes --------
    def generation(self) -> int:
        """The store's generation: from the database's announcements when it makes them
        (PostgreSQL), else read from the ``meta`` row."""
        announced = self.db.announced(GENERATION)
        if announced is not None:
            return int(announced)
        row = self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def bump_generation(self, conn: Executor) -> int:
        """Move the generation on (in the writer's transaction ``conn``); returns the new one."""
        row = conn.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1') ON CONFLICT (key) "
            "DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT) RETURNING value"
        ).fetchone()
        self.db.announce(conn, GENERATION, row[0])
        return int(row[0])


GENERATION = "generation"
