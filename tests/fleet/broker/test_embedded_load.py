"""The embedded broker under many devices: connects, subscribes and publishes of different devices overlap,
and no message the broker acknowledged is missing from the fleet's store (issue 16: at 300 devices amqtt
killed 771 sessions and 382 acknowledged messages were never stored)."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeml.fleet.broker import EmbeddedBroker, service_credentials
from edgeml.fleet.store.telemetry_models import DeviceMessage
from tests.fleet.conftest import make_fleet
from tests.fleet.mqtt_checks import connect
from tests.support.mqtt_swarm import SwarmDevice, run_swarm
from tests.support.services import free_port

DEVICES, MESSAGES, CHATTY = 60, 4, 1500


class _Stream:
    """One device publishing ``count`` QoS 1 envelopes as fast as the broker takes them, in a thread."""

    def __init__(self, port: int, device_id: str, password: str, count: int) -> None:
        import threading

        from edgeml.telemetry.messages import envelope

        self.acked: set[int] = set()
        self.password = password
        self._thread = threading.Thread(target=self._run, args=(port, device_id, count, envelope), daemon=True)
        self._thread.start()

    def _run(self, port: int, device_id: str, count: int, envelope) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        client.username_pw_set(device_id, self.password)
        client.max_inflight_messages_set(50)
        client.connect("127.0.0.1", port)
        client.loop_start()
        infos = [(seq, client.publish(f"edgeml/v1/{device_id}/telemetry",
                                      envelope(device_id, seq, time.time(), "telemetry", {}), qos=1))
                 for seq in range(1, count + 1)]
        for seq, info in infos:
            info.wait_for_publish(60)
            self.acked.add(seq)
        client.disconnect()
        client.loop_stop()

    def join(self) -> set[int]:
        self._thread.join(90)
        return self.acked


def _wait(predicate, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stored(fleet, expected: int, timeout_s: float = 30) -> dict[str, set[int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        with fleet.server.store.session() as s:
            rows = s.query(DeviceMessage.device_id, DeviceMessage.seq).all()
        if len(rows) >= expected or time.monotonic() > deadline:
            out: dict[str, set[int]] = {}
            for device, seq in rows:
                out.setdefault(device, set()).add(seq)
            return out
        time.sleep(0.1)


def test_devices_connecting_while_others_subscribe_and_publish_lose_nothing(tmp_path) -> None:
    fleets = make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'f.db'}", broker=None, broker_port=free_port())
    fleet = next(fleets)
    try:
        port = fleet.server.broker.port
        enrolled = [fleet.enroll() for _ in range(DEVICES)]
        # given a wildcard subscriber (a dashboard, an external ingest): every telemetry message is then
        # broadcast through the subscription walk while devices keep subscribing
        service = service_credentials(fleet.server.store)
        watcher, why = connect(port, service.username, service.password)
        assert watcher is not None, why
        assert watcher.subscribe("edgeml/v1/+/telemetry") == 1
        # and one device streaming telemetry the whole time
        chatty_device = enrolled.pop()
        chatty = chatty_device["device_id"]
        stream = _Stream(port, chatty, chatty_device["mqtt"]["password"], CHATTY)
        # when every other device connects in overlapping waves, subscribes and publishes QoS 1
        swarm = [SwarmDevice(d["device_id"], d["mqtt"]["password"]) for d in enrolled]
        result = run_swarm("127.0.0.1", port, swarm, messages=MESSAGES, concurrency=20, timeout_s=60, processes=2)
        result.acked[chatty] = stream.join()
        result.connected, result.subscribed = result.connected + 1, result.subscribed + 1
        # then every device got in and stayed in, and every acknowledged (device, seq) is stored
        assert (result.connected, result.subscribed, result.unexpected_disconnects) == (DEVICES, DEVICES, 0)
        assert result.acked_total == (DEVICES - 1) * MESSAGES + CHATTY
        stored = _stored(fleet, result.acked_total)
        assert {d: stored.get(d, set()) for d in result.acked} == result.acked
        # and the live broadcast reached the subscriber too (nothing dropped by a broken walk)
        assert _wait(lambda: len(watcher.received) >= result.acked_total), \
            f"the subscriber got {len(watcher.received)} of {result.acked_total}"
        assert {(json.loads(p)["device"], json.loads(p)["seq"]) for _, p in watcher.received} == {
            (d, s) for d, seqs in result.acked.items() for s in seqs}
        watcher.close()
    finally:
        fleets.close()


class StaticAccounts:
    def login(self, username: str | None, password: str | None) -> str | None:
        return "device" if username == "dev-x" else None


def test_a_session_taken_over_by_its_own_client_id_loses_no_acknowledged_message() -> None:
    # A device whose connection looks dead reconnects with the same client id and a clean session: amqtt
    # then clears the old session's queue, messages it had already acknowledged included.
    tapped: list[bytes] = []
    broker = EmbeddedBroker(StaticAccounts(), port=free_port())
    broker.tap = lambda topic, payload: tapped.append(payload)
    broker.start()
    try:
        first = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-x", protocol=mqtt.MQTTv311)
        first.username_pw_set("dev-x", "pw")
        first.max_inflight_messages_set(500)
        first.connect("127.0.0.1", broker.port)
        first.loop_start()
        infos = [first.publish("edgeml/v1/dev-x/telemetry", str(i).encode(), qos=1) for i in range(2000)]
        for info in infos:
            info.wait_for_publish(20)
        second = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-x", protocol=mqtt.MQTTv311)
        second.username_pw_set("dev-x", "pw")
        second.connect("127.0.0.1", broker.port)  # the take-over, right after the last PUBACK
        second.disconnect()
        first.loop_stop()
    finally:
        broker.stop()
    assert sorted(int(p) for p in tapped) == list(range(2000))
