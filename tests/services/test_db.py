"""The shared database: opening, schema versions, concurrent starts, copying a store between
engines, and hosts that share only the database (each with its own data directory)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from longrag.config import Settings, get_settings
from longrag.errors import DatabaseError, InvalidRequestError
from longrag.services.conversations import ConversationStore
from longrag.services.corpus import Corpus
from longrag.services.db import PostgresDatabase, SQLiteDatabase, connect, database_url
from longrag.services.job_store import JobStore
from longrag.services.migrate import copy_store
from longrag.services.schema import LATEST, version

A = ("The lighthouse at Skerry Point was built in 1851 by the engineer Alan Stevenson. "
     "Its lamp burned whale oil until 1902, when paraffin replaced it.")
B = ("Mount Kesh rises above the valley of Varn. The first recorded ascent of Mount Kesh was made "
     "in 1887 by the surveyor Ida Lorne, who left a cairn on the summit.")
C = ("The Orrin canal links the two lakes of the plain. Barges on the Orrin canal carried slate "
     "and timber until the railway opened in 1874.")


def test_unreachable_server_or_wrong_password_fails_at_open_without_the_password(postgres):
    with pytest.raises(DatabaseError, match="cannot connect") as err:
        connect(postgres.url(password="wrong", user="secret"))
    assert "wrong" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(DatabaseError, match="cannot connect"):
        connect(f"postgresql://longrag@127.0.0.1:{postgres.port + 1}/postgres")
    with pytest.raises(DatabaseError, match="cannot connect"):
        connect(postgres.url("no_such_database"))
    with pytest.raises(DatabaseError, match="permission denied"):  # may connect, may not create the schema
        connect(postgres.url(user="secret", password="right"))
    connect(postgres.url("secretdb", user="secret", password="right")).close()  # its own database opens


def test_unknown_url_scheme_is_refused():
    with pytest.raises(DatabaseError, match="scheme"):
        connect("mysql://localhost/x")
    with pytest.raises(DatabaseError, match="sqlite:///"):
        connect("sqlite://")


@pytest.mark.usefixtures("each_backend")
def test_a_schema_from_a_newer_version_is_refused_and_left_alone():
    url = database_url(get_settings())
    db = connect(url)
    assert version(db) == LATEST
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(LATEST + 1),))
    db.close()
    with pytest.raises(DatabaseError, match=f"schema version {LATEST + 1}.*up to {LATEST}"):
        connect(url)
    raw = SQLiteDatabase(Path(url[len("sqlite:///"):])) if url.startswith("sqlite") else PostgresDatabase(url)
    assert version(raw) == LATEST + 1  # the refused start changed nothing
    raw.close()


@pytest.mark.usefixtures("each_backend")
def test_hosts_starting_at_once_migrate_once():
    url = database_url(get_settings())
    errors: list[BaseException] = []
    opened = []

    def start() -> None:
        try:
            opened.append(connect(url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {version(db) for db in opened} == {LATEST}
    for db in opened:
        db.close()


def _host(tmp_path: Path, name: str, url: str) -> Corpus:
    return Corpus(settings=Settings(data_dir=tmp_path / name, database_url=url))


@pytest.mark.usefixtures("each_backend")
def test_hosts_sharing_only_the_database_see_each_others_writes(tmp_path: Path):
    url = get_settings().database_url or f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    one, two = _host(tmp_path, "one", url), _host(tmp_path, "two", url)
    a = one.ingest_bytes(A.encode(), "a.txt")
    assert two.search("Who built the lighthouse at Skerry Point?", k=1)[0].doc_id == a.doc_id
    b = two.ingest_bytes(B.encode(), "b.txt")
    assert one.search("first ascent of Mount Kesh", k=1)[0].doc_id == b.doc_id
    # a document deleted on one host is gone from the other's very next search, even when another
    # document of the same size takes its place (the index file's count alone would not tell)
    one.delete(a.doc_id)
    c = one.ingest_bytes(C.encode(), "c.txt")
    hits = two.search("Who built the lighthouse at Skerry Point?", k=5)
    assert a.doc_id not in {h.doc_id for h in hits} and c.doc_id in {h.doc_id for h in hits}
    assert two.index().ntotal == b.n_chunks + c.n_chunks
    assert not (tmp_path / "two" / "longrag.sqlite3").exists() or url.endswith("shared.sqlite3")


def test_copy_from_sqlite_to_postgresql_is_verified_and_resumable(tmp_path: Path, postgres):
    source_url = f"sqlite:///{tmp_path / 'old' / 'longrag.sqlite3'}"
    old = Corpus(settings=Settings(data_dir=tmp_path / "old", database_url=source_url))
    docs = [old.ingest_bytes(t.encode(), f"{i}.txt") for i, t in enumerate((A, B, C))]
    src = connect(source_url)
    JobStore(src).create("ingest", state="succeeded", doc_id=docs[0].doc_id)
    conv = ConversationStore(src).create([docs[1].doc_id], "kesh")
    ConversationStore(src).add_turn(conv.conversation_id, "Who climbed it?", "Who climbed Mount Kesh?", {"answer": "Ida Lorne"})
    target_url = postgres.create_database()
    dst = connect(target_url)

    def stop_after_first(n: int, total: int) -> None:
        if n == 1:
            raise KeyboardInterrupt  # the copy is interrupted after its first document

    with pytest.raises(KeyboardInterrupt):
        copy_store(src, dst, progress=stop_after_first)
    report = copy_store(src, dst)
    assert (report.copied_documents, report.skipped_documents) == (2, 1)
    assert report.verified, report
    assert report.counts["vectors"][0] == report.counts["vectors"][1] > 0
    new = Corpus(settings=Settings(data_dir=tmp_path / "new", database_url=target_url))
    assert new.search("first ascent of Mount Kesh", k=1)[0].doc_id == docs[1].doc_id
    assert ConversationStore(dst).get(conv.conversation_id).turns[0].answer == {"answer": "Ida Lorne"}
    d = new.ingest_bytes(b"The bell of Carrow rang for the last time in 1930.", "d.txt")  # new chunk ids follow the copied ones
    assert new.search("bell of Carrow", k=1)[0].doc_id == d.doc_id
    with pytest.raises(InvalidRequestError, match="empty"):  # the target now holds a document the source lacks
        copy_store(src, dst)


def test_database_going_away_mid_ingest_stores_nothing_and_a_retry_succeeds(tmp_path: Path):
    import psycopg
    from bench.pg_server import PostgresServer

    server = PostgresServer()  # a server of this test's own, to stop mid-ingest
    try:
        url = server.create_database()
        corpus = _host(tmp_path, "host", url)
        corpus.embedder.dim  # noqa: B018 - the models load before the server goes away

        def stop_before_commit(stage: str, fraction: float) -> None:
            if stage == "index":
                server.halt()

        with pytest.raises(psycopg.OperationalError):  # transient: the worker task retries it
            corpus.ingest_bytes(A.encode(), "a.txt", progress=stop_before_commit)
        server.start()
        again = _host(tmp_path, "other", url)
        assert again.list() == []  # nothing half-stored
        assert again.store.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
        result = corpus.ingest_bytes(A.encode(), "a.txt")  # the same process recovers its pool
        assert result.created and [d.doc_id for d in again.list()] == [result.doc_id]
        assert again.search("Who built the lighthouse at Skerry Point?", k=1)[0].doc_id == result.doc_id
    finally:
        from longrag.services.db import close_all

        close_all()
        server.stop()
