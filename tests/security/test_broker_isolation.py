"""Broker isolation, tried as an enrolled device would, on the embedded broker and on a real Mosquitto.

Two devices enrol through the fleet API and use the MQTT credentials it hands out. Device B tries to read
device A's traffic (retained desired states included) through every filter it can think of, to write
``desired`` documents (A's and its own, retained or not, directly or as a last will), and to stay
connected after the fleet revoked it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from edgeml.fleet.broker import service_credentials
from edgeml.protocol import desired_topic, device_prefix
from tests.fleet.conftest import Fleet, make_fleet
from tests.fleet.mqtt_checks import Peer, check_refused, connect
from tests.security.broker_peers import closed_by_peer, connect_with_will_and_vanish, raw_connect, watched
from tests.support.mosquitto import mosquitto_binary, running_mosquitto
from tests.support.postgres import temporary_database
from tests.support.services import free_port, require

# Every filter a device might use to read beyond its own topics.
GREEDY_FILTERS = ["#", "+/#", "edgeml/#", "edgeml/v1/#", "edgeml/v1/+/desired", "edgeml/v1/+/+", "$SYS/#",
                  "$share/g/#", "$share/g/edgeml/v1/+/desired"]
# How long "nothing more arrives" is watched for, after a marker sent later did arrive.
ABSENCE_S = 0.5
REVOKE_DISCONNECT_LIMIT_S = 10.0  # the goal is 5 s; the measured time is printed


@dataclass
class BrokerFleet:
    fleet: Fleet
    port: int
    service: tuple[str, str]

    def device(self, enrolled: dict) -> Peer:
        peer, why = connect(self.port, enrolled["device_id"], enrolled["mqtt"]["password"])
        assert peer is not None, why
        return peer

    def service_peer(self) -> Peer:
        peer, why = connect(self.port, *self.service)
        assert peer is not None, why
        return peer


def _embedded(tmp_path, db: str) -> Iterator[BrokerFleet]:
    for fleet in make_fleet(tmp_path / "data", db, broker=None, broker_port=free_port()):
        creds = service_credentials(fleet.server.store)
        yield BrokerFleet(fleet, fleet.server.broker.port, (creds.username, creds.password))


def _mosquitto(tmp_path, db: str) -> Iterator[BrokerFleet]:
    files, pid_file = tmp_path / "broker-files", tmp_path / "mosq" / "mosquitto.pid"
    fleets = make_fleet(tmp_path / "data", db, mosquitto_dir=files, mosquitto_pid_file=pid_file)
    fleet = next(fleets)
    try:
        with running_mosquitto(tmp_path / "mosq", password_file=files / "passwords",
                               acl_file=files / "acl") as mosq:
            fleet.server.context.broker = type(fleet.server.context.broker)(port=mosq.port, host="127.0.0.1")
            creds = service_credentials(fleet.server.store)
            yield BrokerFleet(fleet, mosq.port, (creds.username, creds.password))
    finally:
        fleets.close()


def _managed(tmp_path, db: str) -> Iterator[BrokerFleet]:
    # serve --broker mosquitto: Mosquitto with the dynamic-security plugin, roles per device
    require(mosquitto_binary() is not None, "the mosquitto binary is not installed")
    for fleet in make_fleet(tmp_path / "data", db, broker="mosquitto"):
        creds = service_credentials(fleet.server.store)
        yield BrokerFleet(fleet, fleet.server.broker.port, (creds.username, creds.password))


def _store_url(kind: str, tmp_path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        with temporary_database() as url:
            yield url


# The fleet's store answers the embedded broker's login checks and holds the revocation: both databases
# there. The managed Mosquitto reads the store only when it starts: SQLite is enough for it.
SETUPS = [
    pytest.param(("embedded", "sqlite"), id="embedded-sqlite"),
    pytest.param(("embedded", "postgres"), id="embedded-postgres", marks=pytest.mark.postgres),
    pytest.param(("mosquitto", "sqlite"), id="mosquitto-sqlite", marks=pytest.mark.mosquitto),
    pytest.param(("mosquitto", "postgres"), id="mosquitto-postgres", marks=[pytest.mark.mosquitto,
                                                                           pytest.mark.postgres]),
    pytest.param(("managed", "sqlite"), id="managed-sqlite", marks=pytest.mark.mosquitto),
]


@pytest.fixture(params=SETUPS)
def broker_fleet(request: pytest.FixtureRequest, tmp_path) -> Iterator[BrokerFleet]:
    broker, store = request.param
    setups = {"embedded": _embedded, "mosquitto": _mosquitto, "managed": _managed}
    for url in _store_url(store, tmp_path):
        yield from setups[broker](tmp_path, url)


def _foreign(peer: Peer, own_id: str) -> list[tuple[str, bytes]]:
    return [(t, p) for t, p in peer.received if not t.startswith(device_prefix(own_id) + "/")]


def test_a_device_receives_nothing_of_another_device_whatever_it_subscribes_to(broker_fleet) -> None:
    bf = broker_fleet
    a, b = bf.fleet.enroll(), bf.fleet.enroll()
    a_id, b_id = a["device_id"], b["device_id"]
    srv, dev_a = bf.service_peer(), bf.device(a)
    peers = [srv, dev_a]
    try:
        # given the fleet's retained desired states, and A subscribed to its own as the agent does
        srv.publish(desired_topic(a_id), b"desired-a-retained", retain=True)
        srv.publish(desired_topic(b_id), b"desired-b-retained", retain=True)
        assert dev_a.subscribe(desired_topic(a_id)) == 1
        dev_a.wait_for(lambda got: (desired_topic(a_id), b"desired-a-retained") in got)
        # when B connects (subscribed to nothing) and then subscribes to everything it can think of
        dev_b = bf.device(b)
        peers.append(dev_b)
        codes = {f: dev_b.subscribe(f) for f in [*GREEDY_FILTERS, desired_topic(a_id)]}
        assert dev_b.subscribe(desired_topic(b_id)) == 1
        dev_b.wait_for(lambda got: (desired_topic(b_id), b"desired-b-retained") in got)
        # and A's topics carry live traffic while B holds all those subscriptions
        srv.publish(desired_topic(a_id), b"desired-a-live")
        dev_a.publish(f"{device_prefix(a_id)}/telemetry", b"telemetry-a")
        dev_a.wait_for(lambda got: (desired_topic(a_id), b"desired-a-live") in got)
        srv.publish(desired_topic(b_id), b"desired-b-live")
        dev_b.wait_for(lambda got: (desired_topic(b_id), b"desired-b-live") in got)
        time.sleep(ABSENCE_S)
        # then nothing outside B's own topics reached B, retained or live
        assert _foreign(dev_b, b_id) == [], f"SUBACK codes {codes}"
    finally:
        for peer in peers:
            peer.close()


def test_only_the_fleet_may_publish_desired_states(broker_fleet) -> None:
    bf = broker_fleet
    a, b = bf.fleet.enroll(), bf.fleet.enroll()
    a_id, b_id = a["device_id"], b["device_id"]
    srv, dev_a, dev_b = bf.service_peer(), bf.device(a), bf.device(b)
    try:
        assert srv.subscribe("edgeml/#") == 1
        srv.publish(desired_topic(a_id), b"fleet-a", retain=True)
        srv.publish(desired_topic(b_id), b"fleet-b", retain=True)
        assert dev_a.subscribe(desired_topic(a_id)) == 1
        dev_a.wait_for(lambda got: (desired_topic(a_id), b"fleet-a") in got)
        # when B writes desired documents: A's and its own, retained and not, and as a last will
        for target in (a_id, b_id):
            dev_b.publish(desired_topic(target), b"forged-live")
            dev_b.publish(desired_topic(target), b"forged-retained", retain=True)
            connect_with_will_and_vanish(bf.port, b_id, b["mqtt"]["password"], will_topic=desired_topic(target),
                                         will_payload=b"forged-will")
        dev_b.publish(f"{device_prefix(b_id)}/telemetry", b"b-done")  # after B's writes on the same session
        srv.wait_for(lambda got: (f"{device_prefix(b_id)}/telemetry", b"b-done") in got)
        time.sleep(ABSENCE_S)
        # then no subscriber saw any of them ...
        seen = [(t, p, t == desired_topic(a_id)) for t, p in srv.received + dev_a.received if b"forged" in p]
        assert seen == [], "(topic, payload, is A's) seen by A or the fleet"
        # ... and a fresh subscriber finds only the fleet's documents stored
        fresh = bf.service_peer()
        try:
            assert fresh.subscribe("edgeml/v1/+/desired") == 1
            fresh.wait_for(lambda got: {(desired_topic(a_id), b"fleet-a"), (desired_topic(b_id), b"fleet-b")}
                           <= set(got))
            time.sleep(ABSENCE_S)
            assert sorted(fresh.received) == sorted([(desired_topic(a_id), b"fleet-a"),
                                                     (desired_topic(b_id), b"fleet-b")])
        finally:
            fresh.close()
    finally:
        for peer in (srv, dev_a, dev_b):
            peer.close()


def test_a_revoked_device_is_disconnected_at_once_and_cannot_return(broker_fleet, request) -> None:
    bf = broker_fleet
    a, b = bf.fleet.enroll(), bf.fleet.enroll()
    srv, dev_a, dev_b = bf.service_peer(), bf.device(a), watched(bf.port, b["device_id"], b["mqtt"]["password"])
    try:
        assert srv.subscribe("edgeml/#") == 1
        started = time.monotonic()
        assert bf.fleet.call("POST", f"/v1/devices/{b['device_id']}/revoke").status_code == 200
        assert dev_b.wait_dropped(REVOKE_DISCONNECT_LIMIT_S), "the revoked device is still connected"
        assert dev_b.dropped_at is not None
        elapsed = dev_b.dropped_at - started
        print(f"\n[{request.node.callspec.id}] revoked device disconnected after {elapsed:.3f} s")
        check_refused(bf.port, b["device_id"], b["mqtt"]["password"])
        # the other device keeps its session
        dev_a.publish(f"{device_prefix(a['device_id'])}/telemetry", b"a-still-here")
        srv.wait_for(lambda got: (f"{device_prefix(a['device_id'])}/telemetry", b"a-still-here") in got)
    finally:
        for peer in (srv, dev_a, dev_b):
            peer.close()


def test_revocation_closes_every_connection_of_the_device(broker_fleet) -> None:
    # amqtt replaces a session when a second CONNECT reuses its client id but leaves the first connection
    # open; a revoked device must not keep such a connection either.
    bf = broker_fleet
    b = bf.fleet.enroll()
    first, code = raw_connect(bf.port, b["device_id"], b["mqtt"]["password"], client_id=b["device_id"])
    assert code == 0
    second, code = raw_connect(bf.port, b["device_id"], b["mqtt"]["password"], client_id=b["device_id"])
    assert code == 0
    with first, second:
        assert bf.fleet.call("POST", f"/v1/devices/{b['device_id']}/revoke").status_code == 200
        assert closed_by_peer(second, REVOKE_DISCONNECT_LIMIT_S)
        assert closed_by_peer(first, REVOKE_DISCONNECT_LIMIT_S)
