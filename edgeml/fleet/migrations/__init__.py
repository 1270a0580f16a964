"""Alembic migrations for the fleet store, run programmatically by :func:`edgeml.fleet.store.migrate.upgrade`."""
