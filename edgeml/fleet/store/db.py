"""Engine and sessions for the fleet store: SQLite file by default, PostgreSQL (psycopg 3) for real fleets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from edgeml.errors import ConfigError


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def normalize_db_url(url: str) -> str:
    """Accept the URLs people write (``postgresql://…``) and pick the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("postgresql+psycopg://", "sqlite:///")):
        return url
    raise ConfigError(
        f"unsupported --db URL '{url}': use postgresql://user@host:port/dbname or sqlite:///path/to/fleet.db"
    )


SQLITE_BUSY_TIMEOUT_MS = 15_000   # how long a writer waits for another's transaction before "database is locked"
DEFERRED = "edgeml_deferred"       # execution option: open the SQLite transaction with a plain BEGIN


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets the API read while a write is in progress.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, no fsync per commit
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
    # pysqlite opens transactions itself, lazily and DEFERRED; we open them (see _sqlite_begin).
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Any) -> None:
    """BEGIN IMMEDIATE for every transaction that may write, plain BEGIN for ``Store.reader()`` (and for a
    session opened inside another one on the same thread, see :meth:`Store.session`).

    A DEFERRED transaction that reads first and writes later must upgrade its lock; if another
    connection wrote in between, SQLite answers "database is locked" at once, without waiting the busy
    timeout (the API's 500s under ingest load). IMMEDIATE takes the write lock up front and so waits its
    turn; in WAL mode readers are never blocked by it.
    """
    deferred = connection.get_execution_options().get(DEFERRED, False)
    connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


class Store:
    """One database: ``Store.open(url)`` migrates it to the newest schema and hands out sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._readers = sessionmaker(engine.execution_options(**{DEFERRED: True}), expire_on_commit=False)
        self._sqlite = engine.dialect.name == "sqlite"
        self._open = threading.local()   # SQLite: the connection of this thread's outermost session

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        from edgeml.fleet.store.migrate import upgrade

        url = normalize_db_url(url)
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        try:
            if migrate:
                upgrade(engine)
        except Exception as exc:
            engine.dispose()
            if "OperationalError" in type(exc).__name__:
                raise ConfigError(f"cannot open the fleet database {engine.url!r}: {exc}") from exc
            raise
        return cls(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits when the block ends normally and rolls back otherwise.

        On SQLite, a session opened while this thread already holds one joins the outer transaction in a
        SAVEPOINT (committed with it): a transaction of its own would wait for the outer one's write lock,
        which cannot be released before the outer one ends. On PostgreSQL each session is its own
        transaction.
        """
        outer = getattr(self._open, "connection", None)
        if outer is not None:
            nested = Session(bind=outer, join_transaction_mode="create_savepoint", expire_on_commit=False)
            with nested, nested.begin():
                yield nested
            return
        with self._sessions.begin() as session:
            if self._sqlite:
                self._open.connection = session.connection()
            try:
                yield session
            finally:
                self._open.connection = None

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A session for queries only: on SQLite it never takes the write lock (nor waits for it)."""
        with self._readers.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
