"""The database every process shares: embedded SQLite (the default) or a PostgreSQL server.

``LONGRAG_DATABASE_URL`` picks it: unset, the SQLite file under ``LONGRAG_DATA_DIR``; a
``postgresql://`` URL, a PostgreSQL server reached through a psycopg connection pool. Callers
write SQL once, with ``?`` placeholders and the portable subset both engines speak (``ON
CONFLICT``, ``RETURNING``, ``COALESCE``); :class:`Database` adapts the placeholders and the
locking:

- :meth:`Database.transaction` serializes writers: ``BEGIN IMMEDIATE`` on SQLite, a
  transaction-scoped advisory lock on PostgreSQL, so read-modify-write sequences (a batch's
  last item, a conversation's next turn) behave the same on both.
- :meth:`Database.write_lock` is the corpus writers' lock across processes and hosts: a file
  lock beside the SQLite file, a session advisory lock on PostgreSQL (released by the server
  if the holder dies).

The schema is created and upgraded at open (:mod:`longrag.services.schema`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from longrag.errors import DatabaseError

log = logging.getLogger(__name__)

Params = Sequence[Any]

# Advisory lock keys (PostgreSQL): one for writer transactions, one for the corpus write lock,
# one for schema migrations.
_TX_KEY, _WRITE_KEY, _MIGRATE_KEY = 0x10E6_0001, 0x10E6_0002, 0x10E6_0003


class Rows:
    """The rows a statement returned (fetched before its connection went back to the pool)."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[tuple], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)


class Executor(Protocol):
    def execute(self, sql: str, params: Params = ()) -> Rows: ...
    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...


class Database:
    """One database: statements, writer transactions and the writers' lock."""

    dialect: str
    url: str  # without the password

    def execute(self, sql: str, params: Params = ()) -> Rows:
        """Run one statement in its own transaction."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        with self.transaction() as tx:
            tx.executemany(sql, rows)

    def transaction(self) -> Any:
        """A context manager yielding an :class:`Executor`: one writer transaction, committed
        on exit, rolled back on any exception."""
        raise NotImplementedError

    def write_lock(self) -> Any:
        """A context manager held by the corpus while it writes (across processes and hosts)."""
        raise NotImplementedError

    def migration_lock(self) -> Any:
        raise NotImplementedError

    def announce(self, tx: Executor, key: str, value: str) -> None:
        """Tell every process watching this database that the ``meta`` row ``key`` is now
        ``value`` (when the transaction ``tx`` commits). SQLite: nothing to do."""

    def announced(self, key: str) -> str | None:
        """The latest announced value of ``key``; None: unknown, read the ``meta`` row."""
        return None

    def close(self) -> None:
        raise NotImplementedError


# -- SQLite ---------------------------------------------------------------------------------------
class _SQLiteExecutor:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Rows:
        cur = self._conn.execute(sql, params)
        return Rows(cur.fetchall() if cur.description else [], cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._conn.executemany(sql, rows)


class SQLiteDatabase(Database):
    """The embedded file: one connection per process shared by its threads (autocommit, WAL so
    readers never block the writer)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._writers = threading.RLock()
        with self.write_lock():  # switching to WAL needs the file alone: processes opening it at once take turns
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, params: Params = ()) -> Rows:
        with self._lock:
            return _SQLiteExecutor(self._conn).execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteExecutor(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._writers, open(self.path.parent / ".write.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def migration_lock(self) -> Any:
        return self.write_lock()

    def close(self) -> None:
        self._conn.close()


# -- PostgreSQL -----------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\?")


def _pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the project's SQL has no ``?`` or ``%`` literals)."""
    return _PLACEHOLDER.sub("%s", sql)


class _PostgresExecutor:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Rows:
        cur = self._conn.execute(_pg_sql(sql), params or None)
        return Rows(cur.fetchall() if cur.description else [], cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)


def redact(url: str) -> str:
    """``url`` without its password (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresDatabase(Database):
    """A PostgreSQL server through a connection pool; the first connection is made at open, so
    a wrong URL or password fails at start with a clear :class:`DatabaseError`."""

    dialect = "postgresql"

    def __init__(self, url: str, *, max_connections: int = 8, connect_timeout_s: float = 10.0) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = redact(url)
        try:
            psycopg.connect(url, connect_timeout=int(connect_timeout_s)).close()
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to the database {self.url}: {str(exc).strip()}") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=True,
                                    timeout=connect_timeout_s * 3, kwargs={"autocommit": True})
        self._lost = psycopg.OperationalError
        self._watch = _MetaWatcher(url)

    def execute(self, sql: str, params: Params = ()) -> Rows:
        try:
            with self._pool.connection() as conn:
                return _PostgresExecutor(conn).execute(sql, params)
        except self._lost:
            pass  # a pooled connection a server restart broke: the pool has dropped it
        with self._pool.connection() as conn:  # the statement (autocommit, alone) runs once more
            return _PostgresExecutor(conn).execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_TX_KEY,))
            yield _PostgresExecutor(conn)

    @contextmanager
    def _session_lock(self, key: int) -> Iterator[None]:
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def write_lock(self) -> Any:
        return self._session_lock(_WRITE_KEY)

    def migration_lock(self) -> Any:
        return self._session_lock(_MIGRATE_KEY)

    def announce(self, tx: Executor, key: str, value: str) -> None:
        tx.execute("SELECT pg_notify(?, ?)", (_CHANNEL, f"{key}={value}"))

    def announced(self, key: str) -> str | None:
        return self._watch.value(key)

    def close(self) -> None:
        self._watch.close()
        self._pool.close()


_CHANNEL = "longrag_meta"


class _MetaWatcher:
    """``LISTEN`` on a connection of its own, in a daemon thread: the announced ``meta`` values
    (the store's generation) are known without a round trip per search. Until it listens, and
    whenever its connection is lost, it knows nothing and readers query the ``meta`` row."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._values: dict[str, str] | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._run, name="longrag-meta-watch", daemon=True).start()

    def value(self, key: str) -> str | None:
        values = self._values
        return None if values is None else values.get(key)

    def _run(self) -> None:
        import psycopg

        lost = False
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {_CHANNEL}")
                    # read after LISTEN: a change committed in between arrives as a notification
                    self._values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    lost = False
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=1.0):
                            key, _, value = note.payload.partition("=")
                            values = self._values or {}
                            if key not in values or int(value) > int(values[key]):
                                self._values = {**values, key: value}
            except psycopg.Error as exc:
                if not self._closed.is_set() and not lost:  # once per outage, not once a second
                    log.warning("lost the database's announcements (%s); reading the meta row until back", exc)
                    lost = True
            self._values = None
            self._closed.wait(1.0)

    def close(self) -> None:
        self._closed.set()  # the thread leaves within a second


# -- opening --------------------------------------------------------------------------------------
def database_url(settings: Any) -> str:
    """The configured database: ``LONGRAG_DATABASE_URL``, else the SQLite file in the data dir."""
    return settings.database_url or f"sqlite:///{settings.db_path}"


def connect(url: str) -> Database:
    """Open the database at ``url`` and bring its schema to this version (no caching)."""
    from longrag.services.schema import migrate

    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if not path:
            raise DatabaseError(f"a SQLite URL names a file: sqlite:///path/to/file (got {url!r})")
        db: Database = SQLiteDatabase(Path(path))
    elif scheme in ("postgresql", "postgres"):
        db = PostgresDatabase(url)
    else:
        raise DatabaseError(f"unknown database URL scheme {scheme!r}: use sqlite:///path or postgresql://...")
    try:
        migrate(db)
    except DB_ERRORS as exc:
        db.close()
        raise DatabaseError(f"cannot prepare the schema of {db.url}: {str(exc).strip()}") from None
    except DatabaseError:
        db.close()
        raise
    return db


_open: dict[str, Database] = {}
_open_lock = threading.Lock()


def open_database(settings: Any) -> Database:
    """The per-process database of ``settings`` (one pool or connection per URL)."""
    url = database_url(settings)
    with _open_lock:
        if url not in _open:
            _open[url] = connect(url)
        return _open[url]


def _forget_after_fork() -> None:
    """A forked child (Celery's prefork pool) must not share its parent's connections: it
    opens its own on first use. The parent's are dropped, not closed (closing would end them
    for the parent too)."""
    global _open_lock
    _open.clear()
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def close_all() -> None:
    """Close every database this process opened (tests, shutdown)."""
    with _open_lock:
        for db in _open.values():
            db.close()
        _open.clear()


def _driver_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    import psycopg

    return (sqlite3.Error, psycopg.Error), (sqlite3.OperationalError, psycopg.OperationalError)


DB_ERRORS, TRANSIENT_DB_ERRORS = _driver_errors()
"""Any error a database driver raises; those worth a retry (the server went away, a lock timed out)."""
