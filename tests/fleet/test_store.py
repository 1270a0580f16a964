"""The store's schema is owned by Alembic migrations: upgrades keep data, models match the migrations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from edgeml.errors import ConfigError
from edgeml.fleet.store import Store, current_revision, head_revision, normalize_db_url, upgrade
from edgeml.fleet.store.models import Base, Bundle, Rollout


def test_upgrade_from_revision_1_keeps_existing_data(db_url: str) -> None:
    # given a database created by the first release (revision 0001) holding a device, a token and a bundle
    engine = create_engine(normalize_db_url(db_url))
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO devices (id, name, group_name, tags, hardware, installed, enrolled_at, mqtt_password_hash) "
            "VALUES ('dev-1', 'cam', 'lobby', '[\"a\"]', '{\"arch\": \"arm64\"}', '{}', :now, '$7$x')"), {"now": now})
        conn.execute(text(
            "INSERT INTO api_tokens (id, name, role, token_hash, created_at, created_by) "
            "VALUES ('tok_1', 'ops', 'admin', 'abc', :now, 'init')"), {"now": now})
        conn.execute(text(
            "INSERT INTO bundles (id, name, version, target, runtime, precision, key_id, size, manifest, uploaded_at, "
            "uploaded_by) VALUES (:id, 'det', '1.0.0', 'x86-cpu', 'onnxruntime', 'fp32', 'k', 10, '{}', :now, 'ops')"),
            {"id": "a" * 64, "now": now})
        conn.execute(text(
            "INSERT INTO audit_log (at, actor, action, target, source, details) "
            "VALUES (:now, 'ops', 'device.enroll', 'dev-1', '10.0.0.1', '{}')"), {"now": now})
    engine.dispose()

    # when the server opens it (which migrates to head)
    store = Store.open(db_url)
    try:
        # then the schema is current and every row is intact and readable through the models
        assert current_revision(store.engine) == head_revision() != "0001"
        with store.session() as s:
            assert s.execute(text("SELECT name, group_name FROM devices")).one() == ("cam", "lobby")
            assert s.execute(text("SELECT role FROM api_tokens WHERE id='tok_1'")).scalar_one() == "admin"
            assert s.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 1
            bundle = s.get(Bundle, "a" * 64)
            assert bundle is not None and bundle.name == "det"
            assert bundle.uploaded_at == now
            # and the new table of revision 0002 works with the old rows
            s.add(Rollout(id="r1", bundle_id="a" * 64, state="running"))
        with store.session() as s:
            assert s.get(Rollout, "r1") is not None
    finally:
        store.close()


def test_models_match_the_migrations(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = Store.open(db_url)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        store.close()


def test_opening_twice_is_idempotent(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    Store.open(url).close()
    store = Store.open(url)
    assert current_revision(store.engine) == head_revision()
    store.close()


@pytest.mark.parametrize("url", ["mysql://x/y", "fleet.db", "http://db"])
def test_unsupported_db_url_names_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        normalize_db_url(url)


def test_postgres_urls_get_the_psycopg3_driver() -> None:
    assert normalize_db_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_db_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
