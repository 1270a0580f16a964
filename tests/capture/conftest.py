"""The fleet fixtures (an in-process server over SQLite and PostgreSQL) shared with tests/fleet."""

from tests.fleet.conftest import db_url, fleet, sqlite_fleet

__all__ = ["db_url", "fleet", "sqlite_fleet"]
