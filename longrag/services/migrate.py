"""Copy a whole store from one database to another (``longrag migrate --from URL --to URL``).

The usual move is from the embedded SQLite file to a PostgreSQL server when a deployment
outgrows one machine. Documents are copied one per transaction with their sentences, chunks
(chunk ids kept, so vectors and caches stay valid), vectors and artifacts; a document already
in the target is skipped, so an interrupted copy resumes where it stopped. Jobs, batch items,
conversations and pending uploads follow. The copy is verified by row counts and by hashes of
every document's text and of all vectors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from longrag.errors import InvalidRequestError
from longrag.services.db import Database

log = logging.getLogger(__name__)

_DOC_TABLES: list[tuple[str, str]] = [  # (table, columns), copied with each document
    ("documents", "doc_id, sha256, title, filename, kind, n_bytes, n_chars, n_sentences, n_chunks, created_at, text"),
    ("sentences", 'doc_id, idx, start, "end"'),
    ("chunks", 'chunk_id, doc_id, idx, start, "end", first_sentence, last_sentence'),
    ("artifacts", "doc_id, name, data"),
]
_VECTORS = "chunk_id, kind, vec"
_OTHER_TABLES: list[tuple[str, str]] = [  # copied after the documents, whole
    ("jobs", "job_id, kind, state, progress, stage, error, error_code, doc_id, sha256, n_bytes, payload, history, "
             "worker, attempts, created_at, started_at, finished_at, detail"),
    ("batch_items", "job_id, idx, question, result, worker"),
    ("conversations", "conversation_id, title, doc_ids, created_at"),
    ("conversation_turns", "conversation_id, idx, question, standalone_question, answer, created_at"),
    ("uploads", "sha256, data, created_at"),
]
TABLES = [t for t, _ in _DOC_TABLES] + ["vectors"] + [t for t, _ in _OTHER_TABLES]


@dataclass
class MigrationReport:
    copied_documents: int = 0
    skipped_documents: int = 0  # already in the target (a resumed copy)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # table: (source, target)
    text_hash_match: bool = False
    vector_hash_match: bool = False

    @property
    def verified(self) -> bool:
        return self.text_hash_match and self.vector_hash_match and all(s == t for s, t in self.counts.values())


def _insert(table: str, cols: str) -> str:
    marks = ",".join("?" * len(cols.split(",")))
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"


def copy_store(source: Database, target: Database, *, progress: Callable[[int, int], None] | None = None,
               batch: int = 500) -> MigrationReport:
    """Copy everything in ``source`` into ``target`` (both at the current schema) and verify it.

    Raises:
        InvalidRequestError: The target holds chunks of documents the source does not have (a
            copy merges into an empty target or into an earlier, interrupted copy of the same source).
    """
    report = MigrationReport()
    doc_ids = [r[0] for r in source.execute("SELECT doc_id FROM documents ORDER BY created_at, doc_id")]
    present = {r[0] for r in target.execute("SELECT doc_id FROM documents")}
    foreign = present - set(doc_ids)
    if foreign:
        raise InvalidRequestError(f"the target already holds {len(foreign)} documents that are not in the source; "
                                  "copy into an empty database")
    with target.write_lock():
        for n, doc_id in enumerate(doc_ids, 1):
            if doc_id in present:
                report.skipped_documents += 1
            else:
                _copy_document(source, target, doc_id)
                report.copied_documents += 1
            if progress:
                progress(n, len(doc_ids))
        for table, cols in _OTHER_TABLES:
            rows = source.execute(f"SELECT {cols} FROM {table}").fetchall()
            for i in range(0, len(rows), batch):
                target.executemany(_insert(table, cols), [tuple(_plain(v) for v in r) for r in rows[i : i + batch]])
        with target.transaction() as tx:
            if target.dialect == "postgresql":  # explicit chunk ids: move the identity past them
                tx.execute("SELECT setval(pg_get_serial_sequence('chunks', 'chunk_id'), "
                           "COALESCE((SELECT MAX(chunk_id) FROM chunks), 0) + 1, false)")
            tx.execute("INSERT INTO meta (key, value) VALUES ('generation', '1') ON CONFLICT (key) "
                       "DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)")
    _verify(source, target, report)
    log.info("migrated %d documents (%d already there), verified=%s", report.copied_documents,
             report.skipped_documents, report.verified)
    return report


def _plain(value: object) -> object:
    return bytes(value) if isinstance(value, memoryview) else value


def _copy_document(source: Database, target: Database, doc_id: str) -> None:
    with target.transaction() as tx:
        for table, cols in _DOC_TABLES:
            rows = source.execute(f"SELECT {cols} FROM {table} WHERE doc_id=?", (doc_id,)).fetchall()
            tx.executemany(_insert(table, cols), [tuple(_plain(v) for v in r) for r in rows])
        rows = source.execute("SELECT v.chunk_id, v.kind, v.vec FROM vectors v JOIN chunks c USING (chunk_id) "
                              "WHERE c.doc_id=?", (doc_id,)).fetchall()
        tx.executemany(_insert("vectors", _VECTORS), [tuple(_plain(v) for v in r) for r in rows])


def _text_hash(db: Database) -> str:
    h = hashlib.sha256()
    for doc_id, text in db.execute("SELECT doc_id, text FROM documents ORDER BY doc_id"):
        h.update(doc_id.encode())
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


def _vector_hash(db: Database) -> str:
    h = hashlib.sha256()
    for chunk_id, kind, vec in db.execute("SELECT chunk_id, kind, vec FROM vectors ORDER BY chunk_id, kind"):
        h.update(f"{chunk_id}:{kind}:".encode())
        h.update(bytes(vec))
    return h.hexdigest()


def _verify(source: Database, target: Database, report: MigrationReport) -> None:
    for table in TABLES:
        count = f"SELECT COUNT(*) FROM {table}"
        report.counts[table] = (int(source.execute(count).fetchone()[0]), int(target.execute(count).fetchone()[0]))
    report.text_hash_match = _text_hash(source) == _text_hash(target)
    report.vector_hash_match = _vector_hash(source) == _vector_hash(target)
