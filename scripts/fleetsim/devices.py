"""Simulated devices: what a real agent puts on the wire, many devices per asyncio loop.

Each device speaks with its own MQTT credentials (from the enrolment response), publishes the agent's
own telemetry envelope (:func:`edgeml.telemetry.messages.envelope`, with a body built by the agent's
:class:`~edgeml_agent.telemetry.collector.TelemetryCollector`) every ``telemetry_s`` and a heartbeat
every ``heartbeat_s``, all numbered by one per-device sequence as the agent's spool numbers them, and
its retained ``status`` (last will ``offline``). When a desired state arrives on its own ``desired``
topic it reports the agent's update events along the happy path of the agent's own transition table
(``edgeml_agent.updates.machine.next_state``) and then serves the new version. It does not download or
run the bundle: the benchmark measures the fleet, not the device.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from edgeml.protocol import UPDATE_EVENT, UpdateEvent, UpdateState, desired_topic, status_topic, topic_for
from edgeml.telemetry.messages import envelope
from fleetsim.mqtt import MqttClient

# The agent's update events for an update that succeeds, in order (the states come from its table).
HAPPY_PATH = (UpdateEvent.UPDATE, UpdateEvent.DOWNLOADED, UpdateEvent.VERIFIED, UpdateEvent.STAGED,
              UpdateEvent.SMOKE_OK, UpdateEvent.SWITCHED, UpdateEvent.HEALTHY, UpdateEvent.DONE)


@dataclass(frozen=True)
class Credentials:
    device_id: str
    username: str
    password: str
    host: str
    port: int


@dataclass(frozen=True)
class DeviceSettings:
    telemetry_s: float = 10.0
    heartbeat_s: float = 30.0
    model: str = "m"
    version: str = "1.0.0"
    connect_attempts: int = 8      # a device the broker keeps refusing counts as "no broker login"
    update_step_s: float = 0.05    # between two update events (the agent's real steps take longer)


class TelemetryBodies:
    """Telemetry bodies built by the agent's own collector, one collector per model version, refreshed at
    most once a second and shared by every device of the loop (a body per device per tick would cost
    more than the broker and the server together)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._collectors: dict[str, Any] = {}

    def body(self, version: str) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._cache.get(version)
        if cached is None or now - cached[0] > 1.0:
            cached = (now, self._snapshot(version))
            self._cache[version] = cached
        return cached[1]

    def _snapshot(self, version: str) -> dict[str, Any]:
        from edgeml.telemetry.latency import empty_histogram
        from edgeml_agent.metrics import ModelTotals
        from edgeml_agent.telemetry.collector import TelemetryCollector

        served = {"n": 0}
        key = (self.model, version)

        def totals() -> dict[tuple[str, str], ModelTotals]:
            served["n"] += 120   # a device serving ~12 requests/s in a 10 s window
            latency = empty_histogram()
            latency[3] = served["n"]
            return {key: ModelTotals({"200": served["n"]}, {}, latency, served["n"] * 0.0013)}

        collector = self._collectors.setdefault(version, TelemetryCollector(totals, stats_budget=0))
        facts = {key: {"runtime": "onnxruntime", "device": "cpu", "fallback": False, "precision": "fp32"}}
        body: dict[str, Any] = collector.snapshot(facts)
        body["spool_dropped"] = 0   # what the agent's spool adds to every telemetry body
        return body


@dataclass
class DeviceRecord:
    """What one device did, reported back to the benchmark."""

    device_id: str
    seq: int = 0                                   # the last sequence number it sent (it sent 1..seq)
    acked: set[int] = field(default_factory=set)   # sequence numbers the broker acknowledged
    connected_at: float | None = None
    login_refused: bool = False
    desired_at: float | None = None                # when its first desired state arrived (unix time)
    version: str = "1.0.0"


class SimulatedDevice:
    def __init__(self, creds: Credentials, settings: DeviceSettings, bodies: TelemetryBodies) -> None:
        self.creds, self.settings, self.bodies = creds, settings, bodies
        self.record = DeviceRecord(creds.device_id, version=settings.version)
        offline = json.dumps({"state": "offline", "ts": 0}).encode()
        self.client = MqttClient(creds.device_id, creds.username, creds.password, keepalive=60,
                                 will=(status_topic(creds.device_id), offline), on_message=self._on_message)
        self.sending = True
        self._updating = False

    # -- connection ----------------------------------------------------------------------------------------
    async def connect(self, gate: asyncio.Semaphore) -> bool:
        delay = 0.5
        for _ in range(self.settings.connect_attempts):
            try:
                async with gate:
                    code = await self.client.connect(self.creds.host, self.creds.port)
                if code == 0:
                    await self.client.subscribe(desired_topic(self.creds.device_id))
                    self.client.publish_qos1(status_topic(self.creds.device_id), self._status("online"), retain=True)
                    self.record.connected_at = self.record.connected_at or time.time()
                    return True
            except (TimeoutError, OSError, ConnectionError):
                self.client.close()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 8.0)
        self.record.login_refused = self.client.stats.refused > 0
        return False

    @staticmethod
    def _status(state: str) -> bytes:
        return json.dumps({"state": state, "ts": round(time.time(), 3)}).encode()

    # -- sending ------------------------------------------------------------------------------------------
    def send(self, kind: str, body: dict[str, Any]) -> None:
        self.record.seq += 1
        seq = self.record.seq
        payload = envelope(self.creds.device_id, seq, time.time(), kind, body)
        future = self.client.publish_qos1(topic_for(self.creds.device_id, kind), payload)
        future.add_done_callback(lambda f, s=seq: self.record.acked.add(s))

    async def run(self, gate: asyncio.Semaphore) -> None:
        """Telemetry every interval, a heartbeat every heartbeat interval, from a random phase; reconnects
        (and resends what is unacknowledged) when the connection drops."""
        s = self.settings
        if not await self.connect(gate):
            return
        await asyncio.sleep(random.random() * s.telemetry_s)   # devices are not in step
        next_heartbeat = time.monotonic()
        while self.sending:
            if not self.client.connected and not await self.connect(gate):
                return
            if time.monotonic() >= next_heartbeat:
                next_heartbeat += s.heartbeat_s
                self.send("heartbeat", {"uptime_s": round(time.monotonic(), 1)})
            self.send("telemetry", self.bodies.body(self.record.version))
            await asyncio.sleep(s.telemetry_s)

    def unacked(self) -> list[int]:
        return [q for q in range(1, self.record.seq + 1) if q not in self.record.acked]

    # -- desired state -> the agent's update events ------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != desired_topic(self.creds.device_id) or not payload:
            return
        version = desired_version(payload, self.settings.model)
        if version is None or version == self.record.version or self._updating:
            return
        self.record.desired_at = self.record.desired_at or time.time()
        self._updating = True
        asyncio.get_running_loop().create_task(self._update(version))

    async def _update(self, version: str) -> None:
        from edgeml_agent.updates.machine import next_state

        state, previous = UpdateState.IDLE, self.record.version
        for event in HAPPY_PATH:
            target = next_state(state, event)
            if self.sending:
                self.send("event", {"event": UPDATE_EVENT, "state": target, "transition": event, "source": state,
                                    "model": self.settings.model, "version": version, "previous": previous,
                                    "reason": None})
            state = target
            if state == UpdateState.PROBATION:
                self.record.version = version   # the new version serves (and reports telemetry) from here
            await asyncio.sleep(self.settings.update_step_s)
        self._updating = False


def desired_version(wire: bytes, model: str) -> str | None:
    """The version of ``model`` a desired-state document asks for (its signature is the agent's business:
    the benchmark only needs to know what was delivered)."""
    try:
        doc = json.loads(json.loads(wire)["payload"])
        return next((str(m["version"]) for m in doc["models"] if m["name"] == model), None)
    except (ValueError, KeyError, TypeError):
        return None
