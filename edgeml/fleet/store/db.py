"""Engine and sessions for the fleet store: SQLite file by default, PostgreSQL (psycopg 3) for real fleets."""

from __future__ import annotations

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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets the API read while a write is in progress.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Store:
    """One database: ``Store.open(url)`` migrates it to the newest schema and hands out sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        from edgeml.fleet.store.migrate import upgrade

        url = normalize_db_url(url)
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
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
        """A session whose transaction commits when the block ends normally and rolls back otherwise."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
