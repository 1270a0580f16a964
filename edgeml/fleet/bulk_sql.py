"""Many rows in one statement whose text does not depend on how many rows there are.

On PostgreSQL, SQLAlchemy sends an ``executemany`` INSERT as multi-row ``VALUES`` statements: their text
grows with the batch, so psycopg parses a new statement of thousands of placeholders for every batch
(measured: a third of ingest's CPU). Here each column travels as one array parameter instead —
``INSERT … SELECT * FROM unnest(%(a)s::type[], …)`` and ``UPDATE … FROM unnest(…)`` — so the statement is
the same for every batch and psycopg prepares it once. The arrays go in binary (``%(a)b``): in text
form psycopg escapes every element with a regular expression (another third, for JSON bodies). On
SQLite, where ``executemany`` is a loop in C, the plain SQLAlchemy statements are used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Column, Table, and_, bindparam, insert, update
from sqlalchemy.orm import Session

from edgeml.errors import FleetError


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _sql_type(c: Column[Any]) -> str:
    from sqlalchemy.dialects import postgresql

    return "text" if isinstance(c.type, JSON) else str(c.type.compile(dialect=postgresql.dialect()))


def _array(c: Column[Any], values: list[Any]) -> list[Any]:
    """One column's values as psycopg sends them in an array (JSON as its text, cast back in SQL)."""
    if isinstance(c.type, JSON):
        return [None if v is None else json.dumps(v) for v in values]
    return values


def _from_text(c: Column[Any], expr: str) -> str:
    return f"{expr}::json" if isinstance(c.type, JSON) else expr


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]], *, skip_conflicts: bool = False,
                returning: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (dicts with every column); with ``skip_conflicts`` rows whose primary key exists are
    left out (``ON CONFLICT DO NOTHING``). Returns the ``returning`` columns of the rows inserted."""
    if not rows:
        return []
    if not _is_postgres(session):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt: Any = sqlite_insert(table).on_conflict_do_nothing() if skip_conflicts else insert(table)
        if returning:
            stmt = stmt.returning(*(table.c[n] for n in returning))
            return [tuple(r) for r in session.execute(stmt, list(rows))]
        session.execute(stmt, list(rows))
        return []
    columns = [table.c[n] for n in rows[0]]
    select_list = ", ".join(_from_text(c, f'v."{c.name}"') for c in columns)
    arrays = ", ".join(f"%(a{i})b::{_sql_type(c)}[]" for i, c in enumerate(columns))
    sql = (f'INSERT INTO "{table.name}" ({", ".join(chr(34) + c.name + chr(34) for c in columns)}) '
           f'SELECT {select_list} FROM unnest({arrays}) AS v({", ".join(chr(34) + c.name + chr(34) for c in columns)})')
    if skip_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{n}"' for n in returning)
    params = {f"a{i}": _array(c, [r[c.name] for r in rows]) for i, c in enumerate(columns)}
    result = session.connection().exec_driver_sql(sql, params)
    return [tuple(r) for r in result] if returning else []


def update_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Update by primary key: each row holds ``k_<key column>`` and ``v_<column>`` (the new values)."""
    if not rows:
        return
    pk = list(table.primary_key.columns)
    names = [n[2:] for n in rows[0] if n.startswith("v_")]
    if not _is_postgres(session):
        stmt = (update(table).where(and_(*(c == bindparam(f"k_{c.name}") for c in pk)))
                .values({n: bindparam(f"v_{n}") for n in names}))
        session.execute(stmt, list(rows))
        return
    columns = [(f"k_{c.name}", c) for c in pk] + [(f"v_{n}", table.c[n]) for n in names]
    arrays = ", ".join(f"%({p})b::{_sql_type(c)}[]" for p, c in columns)
    sets = ", ".join(f'"{n}" = ' + _from_text(table.c[n], f"v.v_{n}") for n in names)
    match = " AND ".join(f't."{c.name}" = v.k_{c.name}' for c in pk)
    sql = (f'UPDATE "{table.name}" AS t SET {sets} FROM unnest({arrays}) AS v({", ".join(p for p, _ in columns)}) '
           f"WHERE {match}")
    session.connection().exec_driver_sql(sql, {p: _array(c, [r[p] for r in rows]) for p, c in columns})


def dialect_insert(session: Session) -> Any:
    """The INSERT construct with ON CONFLICT support of the session's database."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise FleetError(f"the fleet store supports SQLite and PostgreSQL, not {name}")
