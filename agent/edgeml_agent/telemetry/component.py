"""The telemetry component of the agent (config table ``[telemetry]``, see :mod:`.settings`):
collector + spool + publisher. It is also the agent's event sink and its desired-state feed (the MQTT
connection it owns carries both)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from edgeml.errors import ConfigError
from edgeml.jsontypes import JSON
from edgeml_agent.enroll import Credentials, MqttCredentials
from edgeml_agent.registry import LoadedModel
from edgeml_agent.services import Services
from edgeml_agent.telemetry.collector import TelemetryCollector
from edgeml_agent.telemetry.publisher import BrokerSettings, TelemetryPublisher
from edgeml_agent.telemetry.settings import TelemetryConfig
from edgeml_agent.telemetry.spool import Spool

log = logging.getLogger("edgeml_agent.telemetry")


def broker_settings(config: TelemetryConfig, creds: Credentials | None,
                    extra_status: Mapping[str, JSON]) -> BrokerSettings | None:
    """Explicit settings win; the rest comes from the enrolment credentials. None = telemetry off."""
    mqtt: MqttCredentials = (creds.get("mqtt") if creds else None) or {}
    enabled = config.enabled if config.enabled is not None else bool(creds or config.broker)
    if not enabled:
        return None
    broker = config.broker
    if broker is None and mqtt.get("host"):
        broker = f"{'mqtts' if mqtt.get('tls') else 'mqtt'}://{mqtt.get('host')}:{mqtt.get('port')}"
    device_id = config.device_id or (creds["device_id"] if creds else None)
    if not broker or not device_id:
        raise ConfigError("telemetry is enabled but has no broker/device_id: enrol the device "
                          "(edgeml-agent enroll) or set telemetry.broker and telemetry.device_id")
    return BrokerSettings(
        url=broker, device_id=device_id,
        username=config.username or mqtt.get("username"), password=config.password or mqtt.get("password"),
        ca_file=config.ca_file, extra_status=dict(extra_status),
    )


class TelemetryComponent:
    name = "telemetry"

    def __init__(self, config: TelemetryConfig, services: Services) -> None:
        self.config = config
        self.services = services
        self.publisher: TelemetryPublisher | None = None
        self.collector: TelemetryCollector | None = None
        self._started_at = 0.0
        self._next_telemetry = 0.0
        self._next_heartbeat = 0.0

    def start(self) -> None:
        from edgeml import __version__

        services, data_dir = self.services, self.services.config.data_dir
        settings = broker_settings(self.config, services.credentials, {"agent_version": __version__})
        if settings is None:
            log.info("telemetry off (device not enrolled and no [telemetry] broker configured)")
            return
        self._started_at = time.time()   # components start right after the API: the agent's uptime
        self.collector = TelemetryCollector(services.metrics.totals, self._reference_stats,
                                            stats_budget=self.config.stats_budget,
                                            min_samples=self.config.stats_min_samples, data_dir=data_dir)
        spool = Spool(data_dir / "telemetry" / "spool.db", settings.device_id, self.config.spool_max_messages)
        tick = min(self.config.interval_s, self.config.heartbeat_s, 1.0)
        self.publisher = TelemetryPublisher(settings, spool, tick=self._tick, tick_interval_s=tick)
        services.registry.add_observer(self.collector.observe)
        for loaded in services.registry.models():
            self.event("model_loaded", **self._model_facts(loaded))
        for name, error in services.registry.failures().items():
            self.event("model_failed", model=name, error=error)
        now = time.monotonic()
        self._next_telemetry = now + self.config.interval_s
        self._next_heartbeat = now
        self.publisher.start()

    def event(self, kind: str, **data: JSON) -> None:
        """Publish an event (model loaded, fallback, errors, update progress). Safe from any thread."""
        if self.publisher is not None:
            self.publisher.emit("event", {"event": kind, **data})

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """The desired-state feed: messages on ``topic`` over this component's MQTT connection."""
        if self.publisher is not None:
            self.publisher.subscribe(topic, callback)

    def stop(self) -> None:
        if self.publisher is None:
            return
        if self.collector is not None:
            self.services.registry.remove_observer(self.collector.observe)
            self.publisher.emit("telemetry", self._telemetry_body())  # the last partial window
        self.publisher.stop()

    # -- runs in the publisher thread --------------------------------------------------------------------
    def _tick(self, publisher: TelemetryPublisher) -> None:
        if self.collector is not None:
            self.collector.process()   # every tick, not every interval: the queue of observations stays short
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_s
            publisher.emit("heartbeat", {"uptime_s": round(time.time() - self._started_at, 1)})
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.interval_s
            publisher.emit("telemetry", self._telemetry_body())

    def _telemetry_body(self) -> dict[str, JSON]:
        assert self.collector is not None
        facts = {(m.name, m.version): self._model_facts(m) for m in self.services.registry.models()}
        return self.collector.snapshot(facts)

    @staticmethod
    def _model_facts(loaded: LoadedModel) -> dict[str, JSON]:
        m = loaded.model
        return {"model": m.name, "version": m.version, "runtime": m.runtime, "device": m.device,
                "fallback": bool(m.fallback), "fallback_reason": m.selection.fallback_reason,
                "precision": m.manifest.precision}

    def _reference_stats(self, name: str, version: str) -> Mapping[str, JSON] | None:
        try:
            loaded = self.services.registry.get(name)
        except Exception:
            return None
        if loaded.version != version:
            return None
        return loaded.model.manifest.reference_stats or None
