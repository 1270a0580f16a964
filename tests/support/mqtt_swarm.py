"""A swarm of MQTT devices, each a real paho client with its own credentials, for broker stress tests and
``scripts/bench_broker.py``.

Every device connects (clean session, a last will on its status topic, like the agent), subscribes to its
own ``desired`` topic, publishes a retained ``online`` status, then ``messages`` QoS 1 telemetry envelopes
(seq 1..messages). Devices start in waves of ``concurrency`` so connects, subscribes and publishes of
different devices overlap — the pattern that broke amqtt's subscription loop. The result counts what the
broker acknowledged (PUBACK), so a caller can compare it with what the fleet stored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgeml.protocol import desired_topic, status_topic, topic_for
from edgeml.telemetry.messages import envelope


@dataclass(frozen=True)
class SwarmDevice:
    device_id: str
    password: str


@dataclass
class SwarmResult:
    devices: int = 0
    connected: int = 0
    refused: int = 0
    subscribed: int = 0
    acked: dict[str, set[int]] = field(default_factory=dict)  # device -> seqs the broker acknowledged
    unexpected_disconnects: int = 0
    seconds: float = 0.0

    @property
    def acked_total(self) -> int:
        return sum(len(s) for s in self.acked.values())


class _Device:
    def __init__(self, dev: SwarmDevice, host: str, port: int, messages: int, result: SwarmResult,
                 lock: threading.Lock) -> None:
        import paho.mqtt.client as mqtt

        self.dev, self.messages, self.result, self.lock = dev, messages, result, lock
        self.pending: dict[int, int] = {}  # mid -> seq
        self.done = threading.Event()
        self.stopping = False
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev.device_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        client.username_pw_set(dev.device_id, dev.password)
        client.will_set(status_topic(dev.device_id), b'{"state":"offline"}', qos=1, retain=True)
        client.max_inflight_messages_set(20)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self.client = client
        self.host, self.port = host, port

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=60)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self.lock:
            if reason_code.is_failure:
                self.result.refused += 1
                self.done.set()
                return
            self.result.connected += 1
        client.subscribe(desired_topic(self.dev.device_id), qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reason_codes: Any, properties: Any) -> None:
        with self.lock:
            self.result.subscribed += int(not any(rc.is_failure for rc in reason_codes))
        client.publish(status_topic(self.dev.device_id), b'{"state":"online"}', qos=1, retain=True)
        topic = topic_for(self.dev.device_id, "telemetry")
        for seq in range(1, self.messages + 1):
            payload = envelope(self.dev.device_id, seq, time.time(), "telemetry", {"requests": seq})
            info = client.publish(topic, payload, qos=1)
            with self.lock:
                self.pending[info.mid] = seq

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self.lock:
            seq = self.pending.pop(mid, None)
            if seq is not None:
                acked = self.result.acked.setdefault(self.dev.device_id, set())
                acked.add(seq)
                if len(acked) == self.messages:
                    self.done.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self.stopping:
            with self.lock:
                self.result.unexpected_disconnects += 1

    def stop(self) -> None:
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()


def run_swarm(host: str, port: int, devices: list[SwarmDevice], *, messages: int = 5, concurrency: int = 50,
              timeout_s: float = 120.0, processes: int = 1) -> SwarmResult:
    """Connect every device (``concurrency`` at a time, overlapping), publish, wait for the acks, disconnect.

    One paho client is one thread: past ~150 of them in one Python process the clients starve each other
    of the GIL, connect late and give up (the broker then logs "No data to decode MQTT packet fixed
    header"). ``processes`` > 1 splits the swarm over that many processes, the way real devices are apart.
    """
    if processes > 1:
        import multiprocessing

        chunks = [devices[i::processes] for i in range(processes)]
        args = [(host, port, chunk, messages, max(concurrency // processes, 1), timeout_s) for chunk in chunks]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            parts = pool.starmap(_swarm_part, args)
        return _merge(parts)
    return _swarm_part(host, port, devices, messages, concurrency, timeout_s)


def _merge(parts: list[SwarmResult]) -> SwarmResult:
    out = SwarmResult(seconds=max(p.seconds for p in parts))
    for part in parts:
        out.devices += part.devices
        out.connected += part.connected
        out.refused += part.refused
        out.subscribed += part.subscribed
        out.unexpected_disconnects += part.unexpected_disconnects
        out.acked.update(part.acked)
    return out


def _swarm_part(host: str, port: int, devices: list[SwarmDevice], messages: int, concurrency: int,
                timeout_s: float) -> SwarmResult:
    result = SwarmResult(devices=len(devices))
    lock = threading.Lock()
    swarm: list[_Device] = []
    started = time.monotonic()
    try:
        for i in range(0, len(devices), concurrency):
            wave = [_Device(d, host, port, messages, result, lock) for d in devices[i:i + concurrency]]
            for device in wave:
                device.start()
            swarm += wave
            time.sleep(0.05)  # the next wave connects while this one subscribes and publishes
        deadline = started + timeout_s
        for device in swarm:
            device.done.wait(max(deadline - time.monotonic(), 0))
        result.seconds = time.monotonic() - started
    finally:
        for device in swarm:
            device.stop()
    return result
