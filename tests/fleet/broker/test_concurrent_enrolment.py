"""Concurrent enrolments against a real server and a real Mosquitto: no failures and no orphans.

Issue 16: 1,000 concurrent enrolments with Mosquitto raced on one temporary password file, left 424
devices in the database without broker credentials (their one-time tokens used up) and answered 320
HTTP 500s; a missed reload signal left an enrolled device refused until a manual reload. Here every
device in the store must log in with the password it was given, every used token must have its device
and every device its token (tests.support.enrol_load.audit_enrolments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.broker.mosquitto import mosquitto_files, write_mosquitto_files
from tests.fleet.server_process import fleet_server
from tests.support.enrol_load import audit_enrolments, enrol_concurrently
from tests.support.mosquitto import running_mosquitto
from tests.support.postgres import temporary_database

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres]


def test_200_concurrent_enrolments_with_the_managed_mosquitto_leave_no_orphan(tmp_path: Path) -> None:
    with temporary_database() as db:
        admin = create_first_admin(db)
        with fleet_server(tmp_path / "data", db=db, extra_args=["--broker", "mosquitto"]) as server:
            run = enrol_concurrently(server.url, admin, 200, workers=32)
            audit = audit_enrolments(db, run, ("127.0.0.1", run.broker_port))
    assert run.failures == [] and len(run.enrolled) == 200
    assert audit.devices_in_store == audit.used_tokens == 200
    assert (audit.tokens_without_device, audit.devices_without_token, audit.cannot_log_in) == ([], [], [])


def test_concurrent_enrolments_keep_a_mosquitto_password_file_complete_and_loaded(tmp_path: Path) -> None:
    # A Mosquitto run elsewhere, kept in sync through its password file and SIGHUP (serve --mosquitto-dir)
    files = tmp_path / "broker-files"
    write_mosquitto_files(files, mosquitto_files([]))
    with temporary_database() as db, \
            running_mosquitto(tmp_path / "mosq", password_file=files / "passwords", acl_file=files / "acl") as mosq:
        admin = create_first_admin(db)
        args = ["--broker", f"mqtt://127.0.0.1:{mosq.port}", "--mosquitto-dir", str(files),
                "--mosquitto-pid-file", str(mosq.pid_file)]
        with fleet_server(tmp_path / "data", db=db, extra_args=args) as server:
            run = enrol_concurrently(server.url, admin, 24, workers=12)
            audit = audit_enrolments(db, run, ("127.0.0.1", mosq.port))
    assert run.failures == [] and len(run.enrolled) == 24
    assert (audit.tokens_without_device, audit.devices_without_token, audit.cannot_log_in) == ([], [], [])
