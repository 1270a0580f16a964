"""A throw-away PostgreSQL database for a test (server on 127.0.0.1:5432, trust auth, user postgres).

    from tests.support.postgres import temporary_database
    with temporary_database() as url:   # "postgresql://postgres@127.0.0.1:5432/edgeml_test_<random>"
        ...                              # the database exists and is empty here
    # dropped here, even if other connections are still open

A missing server skips the test locally and fails it under CI=true (tests.support.services.require).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.services import port_open, require

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def admin_url(dbname: str = "postgres") -> str:
    return f"postgresql://{USER}@{HOST}:{PORT}/{dbname}"


def require_postgres() -> None:
    require(port_open(HOST, PORT), f"PostgreSQL is not listening on {HOST}:{PORT}")


def _execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@contextmanager
def temporary_database(prefix: str = "edgeml_test") -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    require_postgres()
    name = f"{prefix}_{secrets.token_hex(6)}"
    _execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url(name)
    finally:
        _execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
