"""The update component of the agent (config table ``[updates]``, see :mod:`.settings`): desired-state
intake (MQTT ``desired`` topic through the telemetry connection, and HTTP polling for sites where MQTT
is blocked), and the worker thread that runs :class:`UpdateMachine`."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from edgeml.desired import DesiredState, parse_desired
from edgeml.errors import EdgeMLError
from edgeml.protocol import desired_topic
from edgeml_agent.services import DesiredFeed, EventSink, NoEvents, Services
from edgeml_agent.transport import HttpUnreachable
from edgeml_agent.updates.context import UpdateContext
from edgeml_agent.updates.health import HealthWatch
from edgeml_agent.updates.machine import UpdateMachine, recover_before_load
from edgeml_agent.updates.record import RecordFile
from edgeml_agent.updates.settings import UpdatesConfig

log = logging.getLogger("edgeml_agent.updates")


class UpdateComponent:
    name = "updates"

    def __init__(self, config: UpdatesConfig, services: Services, *, events: EventSink | None = None,
                 desired: DesiredFeed | None = None) -> None:
        self.config = config
        self.services = services
        self.desired_feed = desired
        self.data_dir = services.config.data_dir
        self.records = RecordFile(self.data_dir / "updates" / "state.json")
        creds = services.credentials
        self.device_id = creds["device_id"] if creds else ""
        self.server_url = creds["server"] if creds else None
        self.api_token = creds["api_token"] if creds else None
        self.enabled = config.enabled if config.enabled is not None else creds is not None
        self.health = HealthWatch()
        # called with each desired state this device accepted (the capture component takes its policies)
        self.desired_listeners: list[Callable[[DesiredState], None]] = []
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_refusal: str | None = None
        self.machine = UpdateMachine(UpdateContext(
            services=services, records=self.records, work_dir=self.data_dir / "updates",
            settings=config.settings, health=self.health, events=events or NoEvents(),
            server_url=self.server_url, headers=self._auth(), device_id=self.device_id,
        ))
        if self.enabled:
            # Before the agent loads its models: a version that keeps crashing the agent is backed out here.
            recover_before_load(self.records, services.store)

    # -- component protocol --------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            log.info("updates off (device not enrolled and [updates] not enabled)")
            return
        if not self.device_id:
            log.error("updates enabled but the device has no id (enrol it with edgeml-agent enroll)")
            return
        self.services.registry.add_observer(self.health.observe)
        if self.desired_feed is not None:
            self.desired_feed.subscribe(desired_topic(self.device_id), self._inbox.put)
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
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    def _run(self) -> None:
        self.machine.run_until_idle()  # finish (or roll back) whatever a crash interrupted
        while not self._stop.is_set():
            wire = self._next_document()
            if wire is None:
                continue
            try:
                desired = parse_desired(wire, self.services.trust.fleet, device_id=self.device_id,
                                        last_serial=self.records.load().last_serial)
                self._accept(desired)
            except EdgeMLError as exc:
                log.warning("desired state refused: %s", exc)
                self.last_refusal = str(exc)
                self.machine.ctx.report("desired_refused", reason=str(exc))
                continue
            self._apply(desired)

    def _accept(self, desired: DesiredState) -> None:
        """Take over its keys, and remember its serial even when it changes no model: an older document
        replayed later must not bring back a key this one revoked or retired."""
        record = self.records.load()
        if desired.serial > record.last_serial:
            record.last_serial = desired.serial
            self.records.save(record)
        for change in self.services.trust.adopt(desired):
            log.warning("trust: %s", change)
            self.machine.ctx.report("trust_changed", change=change)
        for listener in self.desired_listeners:
            try:
                listener(desired)
            except Exception:   # a listener's failure (a full disk) must not refuse the update itself
                log.exception("desired-state listener %r failed", listener)

    def _next_document(self) -> bytes | None:
        interval = self.config.poll_interval_s
        try:
            return self._inbox.get(timeout=interval if interval > 0 else None)
        except queue.Empty:
            return self._poll()

    def _poll(self) -> bytes | None:
        if not self.server_url or not self.api_token:
            return None
        try:
            status, body = self.services.http.get(f"{self.server_url.rstrip('/')}/v1/devices/me/desired",
                                                  headers=self._auth(), timeout=10)
        except HttpUnreachable as exc:
            log.debug("desired-state poll failed: %s", exc)
            return None
        return body if status == 200 and body else None

    def _apply(self, desired: DesiredState) -> None:
        store = self.services.store
        record = self.records.load()
        for model in desired.models:
            if store.current(model.name) == model.version:
                continue
            if f"{model.name}@{model.version}" in record.refused:
                continue  # already failed here; wait for the fleet to ask for something else
            self.machine.begin(desired, model)
            record = self.machine.run_until_idle()
