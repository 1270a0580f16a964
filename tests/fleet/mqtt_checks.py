"""The broker access-control scenario, run against the embedded broker and against a real Mosquitto."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


@dataclass
class Peer:
    """A connected paho client that records what it receives."""

    client: mqtt.Client
    received: list[tuple[str, bytes]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    granted: dict[int, list[int]] = field(default_factory=dict)

    def subscribe(self, topic: str) -> int:
        """Subscribe; return the granted QoS (128 = refused)."""
        done = threading.Event()
        result: list[int] = []

        def on_subscribe(_c, _u, _mid, reason_codes, _p) -> None:
            result.extend(rc.value for rc in reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT), f"no SUBACK for {topic}"
        return result[0]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool]) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.received), TIMEOUT), f"got only {self.received}"
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, username: str | None, password: str | None) -> tuple[Peer | None, str]:
    """Connect; return (peer, 'ok') or (None, reason) when the broker refuses."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:10]}",
                         protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    peer = Peer(client)
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(_c, _u, _f, reason_code, _p) -> None:
        outcome.append("ok" if not reason_code.is_failure else str(reason_code))
        done.set()

    def on_disconnect(_c, _u, _f, reason_code, _p) -> None:
        if not done.is_set():
            outcome.append(f"disconnected: {reason_code}")
            done.set()

    def on_message(_c, _u, msg) -> None:
        with peer.cond:
            peer.received.append((msg.topic, msg.payload))
            peer.cond.notify_all()

    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not done.wait(TIMEOUT):
        outcome.append("timeout")
    if outcome[0] != "ok":
        client.disconnect()
        client.loop_stop()
        return None, outcome[0]
    return peer, "ok"


def check_device_isolation(port: int, service: tuple[str, str], dev_a: dict, dev_b: dict, *,
                           refuses_subscribe: bool) -> None:
    """Device A cannot publish to B's topics nor read B's desired state; the service account reads
    everything and writes only desired topics. ``refuses_subscribe``: the broker answers a forbidden
    SUBSCRIBE with 0x80 (amqtt) rather than granting it and filtering every delivery (Mosquitto's
    acl_file); either way nothing of B's may reach A, which is checked at the end."""
    a_id, b_id = dev_a["device_id"], dev_b["device_id"]
    srv, why = connect(port, *service)
    assert srv is not None, why
    a, why = connect(port, a_id, dev_a["mqtt"]["password"])
    assert a is not None, why
    b, why = connect(port, b_id, dev_b["mqtt"]["password"])
    assert b is not None, why
    try:
        assert srv.subscribe("edgeml/#") == 1
        # the fleet writes each device's desired state (retained)
        srv.publish(f"edgeml/v1/{a_id}/desired", b"desired-a", retain=True)
        srv.publish(f"edgeml/v1/{b_id}/desired", b"desired-b", retain=True)
        # A reads its own desired state ...
        assert a.subscribe(f"edgeml/v1/{a_id}/desired") == 1
        a.wait_for(lambda got: (f"edgeml/v1/{a_id}/desired", b"desired-a") in got)
        # ... but not B's, neither by name nor through a wildcard, nor any telemetry
        forbidden = a.subscribe(f"edgeml/v1/{b_id}/desired")
        assert forbidden == 128 or not refuses_subscribe
        a.subscribe("edgeml/v1/+/desired")
        a.subscribe("edgeml/#")
        assert b.subscribe(f"edgeml/v1/{b_id}/desired") == 1
        b.wait_for(lambda got: (f"edgeml/v1/{b_id}/desired", b"desired-b") in got)
        # A publishes on its own topics (seen by the fleet) and tries B's topics (dropped)
        a.publish(f"edgeml/v1/{b_id}/telemetry", b"forged")
        a.publish(f"edgeml/v1/{b_id}/desired", b"forged-desired")
        a.publish(f"edgeml/v1/{a_id}/telemetry", b"marker-a")
        srv.wait_for(lambda got: (f"edgeml/v1/{a_id}/telemetry", b"marker-a") in got)
        # the service account may not write device topics other than desired
        srv.publish(f"edgeml/v1/{a_id}/telemetry", b"service-forged")
        srv.publish(f"edgeml/v1/{b_id}/desired", b"desired-b2")
        b.wait_for(lambda got: (f"edgeml/v1/{b_id}/desired", b"desired-b2") in got)
        srv.wait_for(lambda got: (f"edgeml/v1/{b_id}/desired", b"desired-b2") in got)
        time.sleep(0.2)
        assert all(b"forged" not in payload for _, payload in srv.received), srv.received
        assert all(b"forged" not in payload for _, payload in b.received), b.received
        assert all(topic.startswith(f"edgeml/v1/{a_id}/") for topic, _ in a.received), a.received
        assert all(topic == f"edgeml/v1/{b_id}/desired" for topic, _ in b.received), b.received
    finally:
        for peer in (srv, a, b):
            peer.close()


def check_refused(port: int, username: str | None, password: str | None) -> str:
    peer, why = connect(port, username, password)
    if peer is not None:
        peer.close()
        raise AssertionError(f"the broker accepted {username!r}")
    return why
