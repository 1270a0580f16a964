"""The update component of the agent: config section ``[updates]``, desired-state intake (MQTT
``desired`` topic through the telemetry connection, and HTTP polling for sites where MQTT is
blocked), and the worker thread that runs :class:`UpdateMachine`.

```toml
[updates]
enabled = true              # default: on when the device is enrolled
poll_interval_s = 30        # HTTP polling of the fleet's desired state (0 = MQTT only)
targets = ["x86-cpu"]       # bundle targets this device accepts (default: any)
keep_versions = 3
probation_s = 30
max_error_rate = 0.05
max_latency_regression = 1.0
min_shadow_agreement = 0.0
shadow_fraction = 0.2
min_requests = 20
min_download_speed = 1024   # bytes/s floor; slower downloads are cut and resumed
download_attempts = 5
download_retry_s = 1.0      # first pause between attempts (doubles, at most 30 s)
```
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeml.desired import DesiredState, parse_desired
from edgeml.errors import EdgeMLError
from edgeml.fleet.topics import desired_topic
from edgeml_agent.config import AgentConfig, Section, register_section
from edgeml_agent.updates.health import HealthWatch
from edgeml_agent.updates.machine import (
    UpdateContext,
    UpdateMachine,
    UpdateSettings,
    fault_from_env,
    recover_before_load,
)
from edgeml_agent.updates.record import RecordFile

if TYPE_CHECKING:
    from edgeml_agent.daemon import Agent

log = logging.getLogger("edgeml_agent.updates")


@dataclass(frozen=True)
class UpdatesConfig:
    enabled: bool | None = None
    poll_interval_s: float = 30.0
    targets: tuple[str, ...] = ()
    settings: UpdateSettings = field(default_factory=UpdateSettings)


def parse_updates(s: Section) -> UpdatesConfig:
    s.only({"enabled", "poll_interval_s", "targets", "keep_versions", "probation_s", "max_error_rate",
            "max_latency_regression", "min_shadow_agreement", "shadow_fraction", "min_requests",
            "min_download_speed", "download_attempts", "download_retry_s"})
    targets = s.get("targets", list, [])
    for i, t in enumerate(targets):
        if not isinstance(t, str):
            raise s.fail(f"targets[{i}]", f"must be a target id, not {t!r}")
    return UpdatesConfig(
        enabled=s.get("enabled", bool, None),
        poll_interval_s=float(s.number("poll_interval_s", 30.0, minimum=0)),
        targets=tuple(targets),
        settings=UpdateSettings(
            keep_versions=s.number("keep_versions", 3, minimum=2, integer=True),
            probation_s=float(s.number("probation_s", 30.0, minimum=0)),
            max_error_rate=float(s.number("max_error_rate", 0.05, minimum=0, maximum=1)),
            max_latency_regression=float(s.number("max_latency_regression", 1.0, minimum=0)),
            min_shadow_agreement=float(s.number("min_shadow_agreement", 0.0, minimum=0, maximum=1)),
            shadow_fraction=float(s.number("shadow_fraction", 0.2, minimum=0, maximum=1)),
            min_requests=s.number("min_requests", 20, minimum=1, integer=True),
            min_download_speed=float(s.number("min_download_speed", 1024.0, minimum=0)),
            download_attempts=s.number("download_attempts", 5, minimum=1, integer=True),
            download_retry_s=float(s.number("download_retry_s", 1.0, minimum=0)),
            target_ids=tuple(targets),
            fault=fault_from_env(),
        ),
    )


register_section("updates", parse_updates)


def _credentials(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "credentials.json"
    return json.loads(path.read_text()) if path.exists() else {}


class UpdateComponent:
    name = "updates"

    def __init__(self, config: AgentConfig) -> None:
        from edgeml_agent.store import Store

        self.config: UpdatesConfig = config.sections.get("updates") or UpdatesConfig()
        self.data_dir = config.data_dir
        self.records = RecordFile(config.data_dir / "updates" / "state.json")
        creds = _credentials(config.data_dir)
        self.device_id = str(creds.get("device_id") or "")
        self.server_url = creds.get("server")
        self.api_token = creds.get("api_token")
        self.enabled = self.config.enabled if self.config.enabled is not None else bool(creds)
        self.health = HealthWatch()
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.machine: UpdateMachine | None = None
        self.last_refusal: str | None = None
        if self.enabled:
            # Before the agent loads its models: a version that keeps crashing the agent is backed out here.
            recover_before_load(self.records, Store(config.data_dir, {}))

    # -- component protocol --------------------------------------------------------------------------
    def start(self, agent: Agent) -> None:
        if not self.enabled:
            log.info("updates off (device not enrolled and [updates] not enabled)")
            return
        if not self.device_id:
            log.error("updates enabled but the device has no id (enrol it with edgeml-agent enroll)")
            return
        agent.registry.add_observer(self.health.observe)
        telemetry = next((c for c in agent.components if getattr(c, "name", "") == "telemetry"), None)
        ctx = UpdateContext(
            agent=agent, records=self.records, work_dir=self.data_dir / "updates", settings=self.config.settings,
            health=self.health, report=self._reporter(telemetry), server_url=self.server_url,
            headers={"Authorization": f"Bearer {self.api_token}"} if self.api_token else {},
            device_id=self.device_id,
        )
        self.machine = UpdateMachine(ctx)
        publisher = getattr(telemetry, "publisher", None)
        if publisher is not None:
            publisher.subscribe(desired_topic(self.device_id), self._inbox.put)
        self._thread = threading.Thread(target=self._run, name="edgeml-updates", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def offer(self, wire: bytes) -> None:
        """Hand a desired-state document to the worker (tests and the HTTP poller use this too)."""
        self._inbox.put(wire)

    # -- worker ------------------------------------------------------------------------------------
    def _reporter(self, telemetry: Any) -> Any:
        def report(kind: str, **data: Any) -> None:
            log.info("%s: %s", kind, {k: v for k, v in data.items() if v is not None})
            if telemetry is not None:
                telemetry.event(kind, **data)
        return report

    def _run(self) -> None:
        assert self.machine is not None
        self.machine.run_until_idle()  # finish (or roll back) whatever a crash interrupted
        while not self._stop.is_set():
            wire = self._next_document()
            if wire is None:
                continue
            try:
                desired = parse_desired(wire, self.machine.ctx.agent.trust, device_id=self.device_id,
                                        last_serial=self.records.load().last_serial)
            except EdgeMLError as exc:
                log.warning("desired state refused: %s", exc)
                self.last_refusal = str(exc)
                self.machine.ctx.report("desired_refused", reason=str(exc))
                continue
            self._apply(desired)

    def _next_document(self) -> bytes | None:
        interval = self.config.poll_interval_s
        try:
            return self._inbox.get(timeout=interval if interval > 0 else None)
        except queue.Empty:
            return self._poll()

    def _poll(self) -> bytes | None:
        if not self.server_url or not self.api_token:
            return None
        import httpx

        try:
            r = httpx.get(f"{self.server_url.rstrip('/')}/v1/devices/me/desired",
                          headers={"Authorization": f"Bearer {self.api_token}"}, timeout=10)
        except httpx.TransportError as exc:
            log.debug("desired-state poll failed: %s", exc)
            return None
        return r.content if r.status_code == 200 and r.content else None

    def _apply(self, desired: DesiredState) -> None:
        assert self.machine is not None
        store = self.machine.ctx.agent.store
        record = self.records.load()
        for model in desired.models:
            if store.current(model.name) == model.version:
                continue
            if f"{model.name}@{model.version}" in record.refused:
                continue  # already failed here; wait for the fleet to ask for something else
            self.machine.begin(desired, model)
            record = self.machine.run_until_idle()
