"""The desired-state publisher against a real Mosquitto: pipelined QoS 1 publishing with a bounded window,
every document acknowledged as (device, serial), retained for a device that subscribes later, and nothing
counted as acknowledged across a broker restart."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from edgeml.fleet.rollouts.publisher import MqttDesiredPublisher
from tests.fleet.rollouts.real_fleet import wait_for
from tests.support.mosquitto import running_mosquitto

N = 1500


def _publisher(port: int, window: int) -> MqttDesiredPublisher:
    publisher = MqttDesiredPublisher("127.0.0.1", port, "fleet", "x", client_id="test-rollouts", max_inflight=50,
                                     window=window)
    publisher.start()
    assert publisher.connected.wait(10)
    assert publisher.take_resync()
    return publisher


def test_a_wave_is_pipelined_acknowledged_per_device_and_retained(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "mq") as broker:
        publisher = _publisher(broker.port, window=200)
        seen_outstanding: list[int] = []
        try:
            # when 1,500 documents are handed over (the window of 200 makes publish wait for acknowledgements)
            for i in range(N):
                assert publisher.publish(f"dev{i:05d}", 1000 + i, b'{"payload": "%d"}' % i)
                seen_outstanding.append(publisher.outstanding())
            # then every one is acknowledged, with its device and serial, and never more than the window waited
            acked: list[tuple[str, int]] = []
            wait_for("every PUBACK", lambda: acked.extend(publisher.take_acked()) or len(acked) >= N, 30)
            assert sorted(acked) == [(f"dev{i:05d}", 1000 + i) for i in range(N)]
            assert max(seen_outstanding) <= 200
            # and a device that subscribes afterwards gets its document from the broker (retained)
            got = threading.Event()
            payloads: list[bytes] = []
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="late-device")
            client.on_message = lambda c, u, m: (payloads.append(m.payload), got.set())
            client.connect("127.0.0.1", broker.port)
            client.subscribe("edgeml/v1/dev01234/desired", qos=1)
            client.loop_start()
            assert got.wait(10) and payloads == [b'{"payload": "1234"}']
            client.loop_stop()
            client.disconnect()
        finally:
            publisher.stop()


def test_nothing_outstanding_survives_a_lost_connection(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "mq") as broker:
        publisher = _publisher(broker.port, window=100)
        try:
            broker.process.send_signal(signal.SIGSTOP)   # the broker takes the bytes and answers nothing
            sent = [publisher.publish(f"dev{i}", i, b"{}") for i in range(50)]
            assert all(sent) and publisher.outstanding() == 50 and publisher.take_acked() == []
            broker.process.kill()                   # then it is gone: the connection drops
            broker.process.wait(10)
            wait_for("the publisher to notice", lambda: not publisher.connected.is_set(), 60)
            # then none of the 50 counts as delivered, and new documents are refused until a reconnect
            assert publisher.outstanding() == 0 and publisher.take_acked() == []
            assert publisher.publish("dev-late", 1, b"{}") is False
        finally:
            publisher.stop()
