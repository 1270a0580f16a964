"""The fleet store: SQLAlchemy models, the engine/session factory and the Alembic migrations runner."""

from edgeml.fleet.store import capture_models as capture_models
from edgeml.fleet.store import rollup_models as rollup_models
from edgeml.fleet.store import telemetry_models as telemetry_models
from edgeml.fleet.store.db import Store, normalize_db_url, sqlite_url
from edgeml.fleet.store.migrate import current_revision, head_revision, upgrade

__all__ = ["Store", "current_revision", "head_revision", "normalize_db_url", "sqlite_url", "upgrade"]
