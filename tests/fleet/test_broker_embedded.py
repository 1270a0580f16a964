"""The embedded broker (amqtt) enforces the fleet's accounts and topic rules."""

from __future__ import annotations

import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeml.errors import FleetError
from edgeml.fleet.broker import EmbeddedBroker, service_credentials
from tests.fleet.conftest import make_fleet
from tests.fleet.mqtt_checks import check_device_isolation, check_refused, connect
from tests.security.broker_peers import closed_by_peer, raw_connect
from tests.support.services import free_port


@pytest.fixture
def fleet_with_broker(tmp_path):
    yield from make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'f.db'}", broker=None,
                          broker_port=free_port())


def test_devices_are_confined_to_their_own_topics(fleet_with_broker) -> None:
    fleet = fleet_with_broker
    port = fleet.server.broker.port
    a, b = fleet.enroll(), fleet.enroll()
    assert a["mqtt"]["port"] == port and a["mqtt"]["host"] == "127.0.0.1"
    service = service_credentials(fleet.server.store)
    check_device_isolation(port, (service.username, service.password), a, b,
                           refuses_subscribe=True)


def test_revoked_wrong_and_anonymous_logins_are_refused(fleet_with_broker) -> None:
    fleet = fleet_with_broker
    port = fleet.server.broker.port
    device = fleet.enroll()
    did, password = device["device_id"], device["mqtt"]["password"]
    peer, why = connect(port, did, password)
    assert peer is not None, why
    peer.close()
    check_refused(port, did, password + "x")
    check_refused(port, None, None)
    check_refused(port, "edgeml-fleet", "guess")
    # a session that is open when the device is revoked is closed before the revoke call answers
    open_peer, why = connect(port, did, password)
    assert open_peer is not None, why
    try:
        assert fleet.call("POST", f"/v1/devices/{did}/revoke").status_code == 200
        deadline = time.monotonic() + 10
        while open_peer.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not open_peer.client.is_connected()
    finally:
        open_peer.client.loop_stop()
    check_refused(port, did, password)


def test_an_explicit_port_that_is_taken_names_the_port_and_option(sqlite_fleet) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        broker = EmbeddedBroker(sqlite_fleet.server.accounts, port=port)
        with pytest.raises(FleetError, match=f"{port}.*--broker-port"):
            broker.start()


def test_the_default_port_falls_back_to_a_free_one_when_taken(sqlite_fleet, monkeypatch) -> None:
    from edgeml.fleet.broker import component

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        monkeypatch.setattr(component, "DEFAULT_PORT", taken)
        broker = EmbeddedBroker(sqlite_fleet.server.accounts)
        broker.start()
        try:
            assert broker.port != taken
            service = service_credentials(sqlite_fleet.server.store)
            peer, why = connect(broker.port, service.username, service.password)
            assert peer is not None, why
            peer.close()
        finally:
            broker.stop()


def test_a_login_that_raced_the_revocation_is_closed_once_connected(fleet_with_broker) -> None:
    # The broker is told of a revocation (forget) while a login already passed the store check: here the
    # store still accepts the device, as it did for that login, so only the broker's own mark can stop it.
    fleet = fleet_with_broker
    port = fleet.server.broker.port
    device = fleet.enroll()
    fleet.server.broker.forget(device["device_id"])
    sock, code = raw_connect(port, device["device_id"], device["mqtt"]["password"])
    with sock:
        assert code == 0  # the store check passed ...
        assert closed_by_peer(sock, 10)  # ... and the connection is closed as soon as it is registered


def test_every_acknowledged_message_reaches_the_fleet_when_the_client_disconnects_at_once() -> None:
    # amqtt acknowledges a QoS 1 PUBLISH when it queues it; a client that disconnects as soon as its last
    # PUBACK arrives must not lose what was still queued (seen: a third to a half of them dropped).
    tapped: list[bytes] = []
    broker = EmbeddedBroker(StaticAccounts({"dev-x": "device"}), port=free_port())
    broker.tap = lambda topic, payload: tapped.append(payload)
    broker.start()
    try:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-x", protocol=mqtt.MQTTv311)
        client.username_pw_set("dev-x", "pw")
        client.max_inflight_messages_set(200)  # a backlog on the broker, as a device's spool resend makes
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        infos = [client.publish("edgeml/v1/dev-x/events", str(i).encode(), qos=1) for i in range(1000)]
        for info in infos:
            info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
    finally:
        broker.stop()  # lets the broker finish the plugin calls it already fired
    assert sorted(int(p) for p in tapped) == list(range(1000))


class StaticAccounts:
    def __init__(self, kinds: dict[str, str]) -> None:
        self.kinds = kinds

    def login(self, username: str | None, password: str | None) -> str | None:
        return self.kinds.get(username or "")
