"""``serve --broker mosquitto``: a Mosquitto the fleet starts, configures (dynamic-security plugin) and
supervises; credentials are added and removed by control messages the broker acknowledges."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import NoReturn

import pytest

from edgeml.errors import FleetError
from edgeml.fleet.broker import service_credentials
from edgeml.fleet.broker.managed import ManagedMosquitto, find_dynsec_plugin, managed_conf, run_as_user
from edgeml.fleet.broker.mosquitto import MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES
from edgeml.fleet.store.models import EnrollmentToken
from edgeml.fleet.store.telemetry_models import DeviceMessage
from edgeml.telemetry.messages import envelope
from tests.fleet.conftest import make_fleet
from tests.fleet.mqtt_checks import check_device_isolation, check_refused, connect
from tests.support.mosquitto import mosquitto_binary
from tests.support.services import require

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def managed_fleet(tmp_path):
    require(mosquitto_binary() is not None, "the mosquitto binary is not installed")
    fleets = make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'f.db'}", broker="mosquitto")
    fleet = next(fleets)
    try:
        yield fleet
    finally:
        fleets.close()


def _wait(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_enrolled_devices_are_confined_and_revoked_ones_are_cut_off(managed_fleet) -> None:
    fleet = managed_fleet
    broker = fleet.server.broker
    assert isinstance(broker, ManagedMosquitto)
    # an enrolled device can log in as soon as the enrolment answered: no reload to miss
    a, b = fleet.enroll(), fleet.enroll()
    assert a["mqtt"]["port"] == broker.port
    service = service_credentials(fleet.server.store)
    check_device_isolation(broker.port, (service.username, service.password), a, b, refuses_subscribe=True)
    check_refused(broker.port, a["device_id"], "wrong")
    check_refused(broker.port, None, None)
    # revocation: the open session is dropped before the call answers, and the login is refused after
    peer, why = connect(broker.port, a["device_id"], a["mqtt"]["password"])
    assert peer is not None, why
    assert fleet.call("POST", f"/v1/devices/{a['device_id']}/revoke").status_code == 200
    assert _wait(lambda: not peer.client.is_connected(), 10)
    peer.client.loop_stop()
    check_refused(broker.port, a["device_id"], a["mqtt"]["password"])
    # the other device is untouched
    other, why = connect(broker.port, b["device_id"], b["mqtt"]["password"])
    assert other is not None, why
    other.close()


def test_a_broker_that_cannot_take_the_device_fails_the_enrolment_and_changes_nothing(managed_fleet) -> None:
    fleet = managed_fleet
    fleet.server.broker.stop()  # the broker is gone: the control message gets no answer
    r = fleet.call("POST", "/v1/enrollment-tokens", json={})
    token = r.json()["token"]
    answer = fleet.http.post("/v1/enroll", headers=fleet.auth(token), json={"name": "x", "hardware": {},
                                                                             "installed": {}})
    assert answer.status_code == 503 and "try again" in answer.json()["detail"]
    assert answer.headers["Retry-After"]
    with fleet.server.store.reader() as s:  # nothing happened: the token is unused, no device exists
        row = s.query(EnrollmentToken).one()
        assert row.used_at is None and row.device_id is None
        assert fleet.call("GET", "/v1/devices").json() == []


def test_a_killed_mosquitto_is_restarted_with_every_device_and_telemetry_still_arrives(managed_fleet) -> None:
    fleet = managed_fleet
    broker = fleet.server.broker
    before = fleet.enroll()
    old = broker._process
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    assert _wait(lambda: broker.restarts == 1)
    after = fleet.enroll()  # the control channel reconnected to the new process
    for device in (before, after):
        peer, why = connect(broker.port, device["device_id"], device["mqtt"]["password"])
        assert peer is not None, why
        peer.publish(f"edgeml/v1/{device['device_id']}/telemetry",
                     envelope(device["device_id"], 1, time.time(), "heartbeat", {}))
        peer.close()
    assert _wait(lambda: _stored(fleet) == 2)


def _stored(fleet) -> int:
    with fleet.server.store.session() as s:
        return int(s.query(DeviceMessage).count())


def test_the_config_sets_queue_limits_and_a_missing_binary_is_a_clear_error(tmp_path, monkeypatch) -> None:
    text = managed_conf(tmp_path, find_dynsec_plugin(), "127.0.0.1", 1884, "mosquitto")
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}" in text
    assert f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}" in text
    assert "allow_anonymous false" in text and "listener 1884 127.0.0.1" in text and "user mosquitto" in text
    from edgeml.fleet.broker import managed

    monkeypatch.setattr(managed.shutil, "which", lambda name: None)
    monkeypatch.setattr(managed.os, "access", lambda path, mode: False)
    with pytest.raises(FleetError, match=r"apt install mosquitto.*embedded broker"):
        ManagedMosquitto(None, tmp_path).start()  # type: ignore[arg-type]


def _skip_or_fail(reason: str) -> NoReturn:
    """Skip on a developer's machine; under CI=true (which runs as root and installs Mosquitto) it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run this test")
    pytest.skip(reason)


def test_as_root_the_files_go_to_the_mosquitto_user_or_mosquitto_stays_root(tmp_path: Path) -> None:
    import pwd

    if os.geteuid() != 0:
        _skip_or_fail("only root makes Mosquitto switch users")
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        _skip_or_fail("no 'mosquitto' user on this machine (Debian's mosquitto package creates it)")
    import shutil
    import tempfile

    reachable = Path(tempfile.mkdtemp(prefix="edgeml-open-"))  # pytest's own tmp root is 0700
    try:
        os.chmod(reachable, 0o755)
        (reachable / "dynamic-security.json").write_text("{}")
        assert run_as_user(reachable) == "mosquitto"
        assert (reachable / "dynamic-security.json").stat().st_uid == user.pw_uid
    finally:
        shutil.rmtree(reachable)
    hidden = tmp_path / "closed" / "inner"
    hidden.mkdir(parents=True)
    os.chmod(tmp_path / "closed", 0o700)  # like /root: user mosquitto cannot pass it
    assert run_as_user(hidden) == "root"
