"""The capture component: a per-model capture policy applied to live requests, a bounded hand-over to
one writer thread, the on-disk spool, and the uploader thread.

Threads and what each may do:

- request threads (``observe``, a registry observer): look up the model version's policy (a dict read),
  read the budget's ``closed_until``, :func:`~.policy.decide`, and on a hit append a *reference* to the
  request's tensors to a bounded deque (no lock: ``deque.append`` is atomic; ``queue.Queue`` cost 1 us
  more per capture, with its lock and condition). A full queue drops the sample and counts it: no request
  ever waits on capture, however slow the disk is;
- the shadow worker (``shadow_disagreed``) offers samples the same way during probation;
- the writer thread takes from the deque (it looks every ``POLL_S`` when it is empty: no wake-up call
  on the request path), keeps the budget, encodes the ``.npz`` and writes it to the spool, and refreshes
  the drift figures the request threads read (once a second, from the telemetry's running summaries);
- the uploader thread (:mod:`.uploader`) sends the spool to the fleet.

Which policy: the fleet's override for the model (the signed desired state's ``capture``, kept in
``<data_dir>/capture/policy.json`` across restarts) or else the bundle's default (manifest ``capture``);
without either, capture is off.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from edgeml.arrays import Array
from edgeml.capture import OFF, CapturePolicy, parse_policy
from edgeml.desired import DesiredState
from edgeml.errors import ConfigError
from edgeml.fileio import write_atomic
from edgeml.jsontypes import JSON
from edgeml_agent.capture.policy import Budget, Decision, decide, top1_probability
from edgeml_agent.capture.spool import CaptureSpool, encode_sample, new_capture_id
from edgeml_agent.capture.uploader import CaptureUploader, PutBytes, httpx_put
from edgeml_agent.registry import Observation
from edgeml_agent.services import EventSink, NoEvents, Services

log = logging.getLogger("edgeml_agent.capture")

# (model, version) -> the latest PSI of each input against the bundle's reference (empty when unknown)
DriftSource = Callable[[str, str], Mapping[str, float]]
DRIFT_REFRESH_S = 1.0
POLL_S = 0.02


class _Pending(NamedTuple):   # a tuple: built in the request thread, so as cheap as it gets
    model: str
    version: str
    inputs: Mapping[str, Array] | None
    outputs: Mapping[str, Array] | None
    decision: Decision
    ts: float


def _no_drift(model: str, version: str) -> Mapping[str, float]:
    return {}


class CaptureComponent:
    name = "capture"

    def __init__(self, services: Services, *, events: EventSink | None = None, drift: DriftSource | None = None,
                 queue_size: int = 64, put: PutBytes = httpx_put,
                 before_write: Callable[[], None] | None = None) -> None:
        self.services = services
        self.events = events or NoEvents()
        self.drift_source = drift or _no_drift
        self.root = services.config.data_dir / "capture"
        self.spool = CaptureSpool(self.root)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queue_size = queue_size
        self._policies: dict[tuple[str, str], CapturePolicy] = {}
        self._overrides: dict[str, JSON] = self._load_overrides()
        self._budgets: dict[str, Budget] = {}
        self._closed_until: dict[str, float] = {}
        self._drift: dict[tuple[str, str], Mapping[str, float]] = {}
        self._before_write = before_write   # a test seam (a stalled disk); None in production
        self.queue_full = 0      # samples dropped because the writer was behind
        self.captured = 0        # samples written to the spool
        self.write_failed = 0    # samples the disk refused (full, read-only)
        creds = services.credentials
        self.uploader = (CaptureUploader(self.spool, creds["server"], creds["api_token"], self.events, put=put)
                         if creds else None)
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    # -- component protocol --------------------------------------------------------------------------
    def start(self) -> None:
        self.services.registry.add_observer(self.observe)
        self._writer = threading.Thread(target=self._write_loop, name="edgeml-capture", daemon=True)
        self._writer.start()
        if self.uploader is not None:
            self.uploader.start()
        else:
            log.info("capture: device not enrolled; captured samples stay in %s", self.root)

    def stop(self) -> None:
        self.services.registry.remove_observer(self.observe)
        self._stop.set()
        if self._writer is not None:
            self._writer.join(10)
        if self.uploader is not None:
            self.uploader.stop()
        self.spool.close()

    def stats(self) -> dict[str, int]:
        return {"captured": self.captured, "queue_full": self.queue_full,
                "budget_refused": sum(b.refused for b in self._budgets.values()),
                "quota_dropped": self.spool.dropped, "write_failed": self.write_failed, "spooled": len(self.spool),
                "uploaded": self.uploader.uploaded if self.uploader else 0,
                "refused_by_fleet": self.uploader.refused if self.uploader else 0}

    # -- request threads: cheap, no lock, no disk ----------------------------------------------------
    def observe(self, obs: Observation) -> None:
        if obs.error is not None or not obs.inputs:
            return
        key = (obs.model, obs.version)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._resolve(key)
        if not policy.enabled:
            return
        closed_until = self._closed_until.get(obs.model)
        if closed_until is not None and closed_until > time.monotonic():
            return
        decision = decide(policy, obs.outputs, self._drift.get(key))
        if decision is not None:
            self._offer(_Pending(obs.model, obs.version, obs.inputs, obs.outputs, decision, time.time()))

    def shadow_disagreed(self, obs: Observation, reference: Mapping[str, Array]) -> None:
        """Called by the probation shadow when the new version and the previous one disagree."""
        policy = self._policies.get((obs.model, obs.version)) or self._resolve((obs.model, obs.version))
        if not (policy.enabled and policy.shadow_disagreement):
            return
        figures: dict[str, JSON] = {}
        for side, outputs in (("reference", reference), ("candidate", obs.outputs or {})):
            first = next(iter(outputs.values()), None)
            p = top1_probability(first) if first is not None else None
            if p is not None and first is not None:
                figures[f"{side}_top1"] = int(first.reshape(-1, first.shape[-1])[0].argmax())
                figures[f"{side}_probability"] = round(p, 4)
        self._offer(_Pending(obs.model, obs.version, obs.inputs, obs.outputs,
                             Decision("shadow_disagreement", figures), time.time()))

    def _offer(self, pending: _Pending) -> None:
        # two request threads may both see one free slot: the bound is kept to within a few samples
        if len(self._queue) >= self._queue_size:
            self.queue_full += 1
        else:
            self._queue.append(pending)

    # -- policies --------------------------------------------------------------------------------------
    def _resolve(self, key: tuple[str, str]) -> CapturePolicy:
        model, version = key
        policy = OFF
        try:
            override = self._overrides.get(model)
            if isinstance(override, dict):
                policy = parse_policy(override, f"the fleet's capture policy for {model}")
            else:
                loaded = self.services.registry.get(model)
                if loaded.version == version:
                    doc = loaded.model.manifest.raw.get("capture")
                    policy = parse_policy(doc, f"{model}@{version}'s capture policy") if doc else OFF
        except ConfigError as exc:
            log.error("capture off for %s: %s", model, exc)
        except Exception:   # the model was unloaded meanwhile: decide again on its next request
            return OFF
        self._policies = {**self._policies, key: policy}   # copy-on-write: request threads read it unlocked
        return policy

    def desired_changed(self, desired: DesiredState) -> None:
        """The fleet's signed desired state was accepted: take its capture overrides (none = bundle defaults)."""
        overrides = dict(desired.capture or {})
        if overrides == self._overrides:
            return
        write_atomic(self.root / "policy.json", json.dumps(overrides, sort_keys=True))
        self._overrides = overrides
        self._policies = {}
        log.info("capture policy overrides from the fleet: %s", sorted(overrides) or "none")

    def _load_overrides(self) -> dict[str, JSON]:
        try:
            loaded = json.loads((self.root / "policy.json").read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    # -- writer thread -----------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        next_refresh = 0.0
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh_drift()
                next_refresh = now + DRIFT_REFRESH_S
            try:
                pending = self._queue.popleft()
            except IndexError:
                if self._stop.wait(POLL_S):
                    return
                continue
            try:
                self._write(pending)
            except Exception:   # a full disk, a bug: the sample is lost, counted, and the thread goes on
                self.write_failed += 1
                log.exception("could not write a captured sample")

    def _refresh_drift(self) -> None:
        for (model, version), policy in list(self._policies.items()):
            if policy.enabled and policy.drift_threshold is not None:
                try:
                    self._drift[(model, version)] = dict(self.drift_source(model, version))
                except Exception:
                    log.debug("no drift figures for %s@%s", model, version, exc_info=True)

    def _budget(self, model: str, policy: CapturePolicy) -> Budget:
        budget = self._budgets.get(model)
        if budget is None or budget.limits != policy.budget:
            budget = self._budgets[model] = Budget(policy.budget)
        return budget

    def _write(self, pending: _Pending) -> None:
        policy = self._policies.get((pending.model, pending.version), OFF)
        budget = self._budget(pending.model, policy)
        if not budget.allows():
            self._closed_until[pending.model] = budget.closed_until
            return
        capture_id = new_capture_id()
        meta: dict[str, JSON] = {"id": capture_id, "model": pending.model, "version": pending.version,
                                 "trigger": pending.decision.trigger, "figures": pending.decision.figures,
                                 "ts": pending.ts, "keep": policy.keep}
        data = encode_sample(meta, pending.inputs if policy.keeps_inputs else None,
                             pending.outputs if policy.keeps_outputs else None)
        if not budget.allows_bytes(len(data)):
            return
        if self._before_write is not None:
            self._before_write()
        self.spool.quota_bytes = max([p.budget.disk_quota_bytes for p in self._policies.values() if p.enabled]
                                     or [policy.budget.disk_quota_bytes])
        dropped = self.spool.add(capture_id, meta, data)
        budget.spend(len(data))
        self._closed_until[pending.model] = budget.closed_until
        self.captured += 1
        if dropped:
            log.warning("capture quota: dropped the %d oldest unsent sample(s)", len(dropped))
            self.events.event("capture_dropped", count=len(dropped), reason="disk_quota")
        if self.uploader is not None:
            self.uploader.wake.set()
