"""The telemetry component of the agent: config section ``[telemetry]``, collector + spool + publisher.

```toml
[telemetry]
enabled = true                 # default: on when the device is enrolled (credentials.json exists)
broker = "mqtts://fleet.example:8883"   # default: from credentials.json
device_id = "..."              # default: from credentials.json
username = "..."               # default: from credentials.json
password = "..."               # default: from credentials.json
ca_file = "/etc/edgeml/ca.pem" # CA for mqtts:// (system CAs when absent)
interval_s = 10                # one telemetry message per interval
heartbeat_s = 30
spool_max_messages = 100000    # bound of the on-disk spool; oldest dropped first, counted, reported
stats_budget = 0.002           # share of inference time the input/output summaries may cost
```
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeml.errors import ConfigError
from edgeml_agent.config import Section, register_section
from edgeml_agent.telemetry.collector import TelemetryCollector
from edgeml_agent.telemetry.publisher import BrokerSettings, TelemetryPublisher
from edgeml_agent.telemetry.spool import Spool

if TYPE_CHECKING:
    from edgeml_agent.daemon import Agent

log = logging.getLogger("edgeml_agent.telemetry")


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool | None = None
    broker: str | None = None
    device_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    interval_s: float = 10.0
    heartbeat_s: float = 30.0
    spool_max_messages: int = 100_000
    stats_budget: float = 0.002


def parse_telemetry(s: Section) -> TelemetryConfig:
    s.only({"enabled", "broker", "device_id", "username", "password", "ca_file", "interval_s", "heartbeat_s",
            "spool_max_messages", "stats_budget"})
    broker = s.get("broker", str, None)
    if broker is not None and not broker.startswith(("mqtt://", "mqtts://")):
        raise s.fail("broker", f"must look like mqtt://host:port or mqtts://host:port, not {broker!r}")
    ca = s.get("ca_file", str, None)
    return TelemetryConfig(
        enabled=s.get("enabled", bool, None),
        broker=broker,
        device_id=s.get("device_id", str, None),
        username=s.get("username", str, None),
        password=s.get("password", str, None),
        ca_file=Path(ca).expanduser() if ca else None,
        interval_s=float(s.number("interval_s", 10.0, minimum=0.01)),
        heartbeat_s=float(s.number("heartbeat_s", 30.0, minimum=0.01)),
        spool_max_messages=s.number("spool_max_messages", 100_000, minimum=10, integer=True),
        stats_budget=float(s.number("stats_budget", 0.002, minimum=0.0, maximum=1.0)),
    )


register_section("telemetry", parse_telemetry)


def broker_settings(config: TelemetryConfig, data_dir: Path, extra_status: dict[str, Any]) -> BrokerSettings | None:
    """Explicit settings win; the rest comes from the enrolment credentials. None = telemetry off."""
    creds: dict[str, Any] = {}
    creds_file = data_dir / "credentials.json"
    if creds_file.exists():
        creds = json.loads(creds_file.read_text())
    mqtt = creds.get("mqtt") or {}
    enabled = config.enabled if config.enabled is not None else bool(creds or config.broker)
    if not enabled:
        return None
    broker = config.broker
    if broker is None and mqtt.get("host"):
        broker = f"{'mqtts' if mqtt.get('tls') else 'mqtt'}://{mqtt['host']}:{mqtt['port']}"
    device_id = config.device_id or creds.get("device_id")
    if not broker or not device_id:
        raise ConfigError("telemetry is enabled but has no broker/device_id: enrol the device "
                          "(edgeml-agent enroll) or set telemetry.broker and telemetry.device_id")
    return BrokerSettings(
        url=broker, device_id=device_id,
        username=config.username or mqtt.get("username"), password=config.password or mqtt.get("password"),
        ca_file=config.ca_file, extra_status=extra_status,
    )


class TelemetryComponent:
    name = "telemetry"

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self.publisher: TelemetryPublisher | None = None
        self.collector: TelemetryCollector | None = None
        self._agent: Agent | None = None
        self._next_telemetry = 0.0
        self._next_heartbeat = 0.0

    def start(self, agent: Agent) -> None:
        from edgeml import __version__

        settings = broker_settings(self.config, agent.config.data_dir, {"agent_version": __version__})
        if settings is None:
            log.info("telemetry off (device not enrolled and no [telemetry] broker configured)")
            return
        self._agent = agent
        self.collector = TelemetryCollector(agent.metrics.totals, self._reference_stats,
                                            stats_budget=self.config.stats_budget,
                                            data_dir=agent.config.data_dir)
        spool = Spool(agent.config.data_dir / "telemetry" / "spool.db", settings.device_id,
                      self.config.spool_max_messages)
        tick = min(self.config.interval_s, self.config.heartbeat_s, 1.0)
        self.publisher = TelemetryPublisher(settings, spool, tick=self._tick, tick_interval_s=tick)
        agent.registry.add_observer(self.collector.observe)
        for loaded in agent.registry.models():
            self.event("model_loaded", **self._model_facts(loaded))
        for name, error in agent.registry.failures().items():
            self.event("model_failed", model=name, error=error)
        now = time.monotonic()
        self._next_telemetry = now + self.config.interval_s
        self._next_heartbeat = now
        self.publisher.start()

    def event(self, kind: str, **data: Any) -> None:
        """Publish an event (model loaded, fallback, errors, update progress). Safe from any thread."""
        if self.publisher is not None:
            self.publisher.emit("event", {"event": kind, **data})

    def stop(self) -> None:
        if self.publisher is None:
            return
        if self._agent is not None and self.collector is not None:
            self._agent.registry.remove_observer(self.collector.observe)
            self.publisher.emit("telemetry", self._telemetry_body())  # the last partial window
        self.publisher.stop()

    # -- runs in the publisher thread --------------------------------------------------------------------
    def _tick(self, publisher: TelemetryPublisher) -> None:
        if self.collector is not None:
            self.collector.process()   # every tick, not every interval: the queue of observations stays short
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_s
            publisher.emit("heartbeat", {"uptime_s": round(time.time() - (self._agent.started_at if self._agent else 0), 1)})
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.interval_s
            publisher.emit("telemetry", self._telemetry_body())

    def _telemetry_body(self) -> dict[str, Any]:
        assert self.collector is not None and self._agent is not None
        facts = {(m.name, m.version): self._model_facts(m) for m in self._agent.registry.models()}
        return self.collector.snapshot(facts)

    @staticmethod
    def _model_facts(loaded: Any) -> dict[str, Any]:
        m = loaded.model
        return {"model": m.name, "version": m.version, "runtime": m.runtime, "device": m.device,
                "fallback": bool(m.fallback), "fallback_reason": m.selection.fallback_reason,
                "precision": m.manifest.precision}

    def _reference_stats(self, name: str, version: str) -> dict[str, Any] | None:
        if self._agent is None:
            return None
        try:
            loaded = self._agent.registry.get(name)
        except Exception:
            return None
        if loaded.version != version:
            return None
        return loaded.model.manifest.reference_stats or None
