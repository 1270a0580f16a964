"""The fleet simulator's core (scripts/fleetsim) against a tiny real fleet: 5 devices enrol through the
API, connect to the embedded broker with their own credentials, send telemetry, receive a rollout; and
its exactly-once check catches a lost and a doubled message when the store is broken on purpose."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from fleetsim import check  # noqa: E402
from fleetsim.conductor import SimConfig, simulate  # noqa: E402
from fleetsim.setups import Fleet  # noqa: E402

from edgeml.fleet.bootstrap import create_first_admin  # noqa: E402
from tests.fleet.server_process import fleet_server  # noqa: E402


@pytest.fixture
def tiny_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "fleet"
    data.mkdir()
    db_file = data / "fleet.db"
    admin = create_first_admin(f"sqlite:///{db_file}")
    with fleet_server(data) as server:
        fleet = Fleet(server.url, admin, f"sqlite:///{db_file}", "embedded", server_pids=[server.process.pid])
        cfg = SimConfig(devices=5, duration_s=2.0, telemetry_s=0.5, heartbeat_s=1.0, workers=2, in_process=True,
                        connect_timeout_s=30, rollout_timeout_s=30, drain_timeout_s=30, group="tiny")
        result = simulate(fleet, cfg, tmp_path / "sim")
    return result, db_file


def test_simulated_fleet_stores_everything_once_and_the_check_catches_loss_and_doubles(tiny_run) -> None:  # type: ignore[no-untyped-def]
    result, db_file = tiny_run
    # given a run through the real enrolment API, broker and ingest
    assert len(result.enrolment.devices) == 5 and result.enrolment.failures == 0
    assert result.connected == 5 and result.no_broker_login == 0 and result.tokens_without_device == 0
    assert result.desired_delivered == 5, "every device got the rollout's desired state"
    assert all(n >= 4 for n in result.sent.values()), result.sent   # telemetry, heartbeats, update events
    assert result.once.lost == [] and result.once.doubled == [] and result.once.unexpected == []
    assert result.once.stored == result.once.sent == sum(result.sent.values()) and result.drain == "complete"
    with sqlite3.connect(db_file) as db:   # the agent's update events, idle -> ... -> committed -> idle
        states = db.execute("SELECT json_extract(body, '$.state'), COUNT(*) FROM device_events "
                            "WHERE kind = 'update' GROUP BY 1").fetchall()
    assert dict(states) == {s: 5 for s in ("downloading", "verifying", "staging", "smoke_testing", "switching",
                                           "probation", "committed", "idle")}
    eng = check.engine(f"sqlite:///{db_file}")

    # when one stored message disappears, the check names exactly that one as lost
    victim = sorted(result.sent)[0]
    with sqlite3.connect(db_file) as db:
        db.execute("DELETE FROM device_messages WHERE device_id = ? AND seq = 2", (victim,))
    broken = check.exactly_once(result.sent, check.stored_counts(eng, "tiny"))
    assert broken.lost == [(victim, 2)] and broken.doubled == []

    # when the table loses its key and one message is stored twice, the check names it as doubled
    with sqlite3.connect(db_file) as db:
        db.executescript("ALTER TABLE device_messages RENAME TO device_messages_keyed;"
                         "CREATE TABLE device_messages AS SELECT * FROM device_messages_keyed;")
        db.execute("INSERT INTO device_messages SELECT * FROM device_messages_keyed WHERE device_id = ? AND seq = 3",
                   (victim,))
    broken = check.exactly_once(result.sent, check.stored_counts(eng, "tiny"))
    assert broken.doubled == [(victim, 3)] and broken.lost == [(victim, 2)]
    eng.dispose()


def test_exactly_once_counts_unexpected_rows() -> None:
    report = check.exactly_once({"d1": 2}, [("d1", 1, 1), ("d1", 2, 1), ("d1", 7, 1), ("other", 1, 1)])
    assert report.stored == 2 and report.unexpected == [("d1", 7)] and not report.lost
