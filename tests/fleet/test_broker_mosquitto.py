"""A real Mosquitto, configured with the files the fleet writes, enforces the same rules as the
embedded broker, and picks up enrolments and revocations (files rewritten + SIGHUP)."""

from __future__ import annotations

import subprocess
import time

import pytest

from edgeml.fleet.broker import service_credentials
from edgeml.fleet.broker.mosquitto import MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES, mosquitto_conf
from edgeml.fleet.credentials import check_mosquitto_hash, mosquitto_hash
from tests.fleet.conftest import make_fleet
from tests.fleet.mqtt_checks import check_device_isolation, check_refused, connect
from tests.support.mosquitto import running_mosquitto

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def fleet_and_mosquitto(tmp_path):
    files = tmp_path / "broker-files"
    pid_file = tmp_path / "mosq" / "mosquitto.pid"
    fleets = make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'f.db'}", mosquitto_dir=files,
                        mosquitto_pid_file=pid_file)
    fleet = next(fleets)
    try:
        with running_mosquitto(tmp_path / "mosq", password_file=files / "passwords", acl_file=files / "acl") as mosq:
            assert mosq.pid_file == pid_file
            fleet.server.context.broker = type(fleet.server.context.broker)(port=mosq.port, host="127.0.0.1")
            yield fleet, mosq
    finally:
        fleets.close()


def test_mosquitto_confines_devices_and_drops_revoked_ones(fleet_and_mosquitto) -> None:
    fleet, mosq = fleet_and_mosquitto
    # enrolment rewrites the password file and SIGHUPs mosquitto: the new devices can log in at once
    a, b = fleet.enroll(), fleet.enroll()
    assert a["mqtt"]["port"] == mosq.port
    service = service_credentials(fleet.server.store)
    check_device_isolation(mosq.port, (service.username, service.password), a, b,
                           refuses_subscribe=False)
    check_refused(mosq.port, a["device_id"], "wrong")
    check_refused(mosq.port, None, None)
    # revocation rewrites the files and reloads: an open session is dropped and the device cannot reconnect
    open_peer, why = connect(mosq.port, a["device_id"], a["mqtt"]["password"])
    assert open_peer is not None, why
    assert fleet.call("POST", f"/v1/devices/{a['device_id']}/revoke").status_code == 200
    deadline = time.monotonic() + 10
    while open_peer.client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not open_peer.client.is_connected()
    open_peer.client.loop_stop()
    check_refused(mosq.port, a["device_id"], a["mqtt"]["password"])
    peer, why = connect(mosq.port, b["device_id"], b["mqtt"]["password"])
    assert peer is not None, why
    peer.close()


def test_generated_hashes_are_mosquitto_passwd_compatible(tmp_path) -> None:
    # mosquitto_passwd's own hash verifies with our checker ...
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "u", "s3cret"], check=True, capture_output=True)
    stored = pw.read_text().strip().split(":", 1)[1]
    assert check_mosquitto_hash(stored, "s3cret") and not check_mosquitto_hash(stored, "other")
    # ... and ours is the same function of (password, salt, iterations)
    salt_b64 = stored.split("$")[3]
    import base64

    assert mosquitto_hash("s3cret", salt=base64.b64decode(salt_b64)) == stored


def test_written_config_sets_queue_limits_explicitly() -> None:
    text = mosquitto_conf("/p", "/a", port=1884)
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}" in text
    assert f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}" in text
    assert "allow_anonymous false" in text and "listener 1884 127.0.0.1" in text
