"""Alembic environment: the caller hands over an open connection (no alembic.ini, no URL in a file)."""

from __future__ import annotations

from alembic import context

from edgeml.fleet.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
