"""The update state machine, exactly as DESIGN.md draws it::

    idle → downloading → verifying → staging → smoke_testing → switching → probation → committed
                 (any step) ──fail──▶ failed          switching/probation ──fail/unhealthy──▶ rolling_back → failed

Each state is a small object whose ``on_enter`` does that state's one side effect and returns an
event; :data:`TRANSITIONS` is the whole graph in one table. The record is saved (atomically) with the
next state *before* that state's side effect runs, so a crash anywhere resumes through :data:`RESUME`.
Until ``switching`` the running model is never touched, so a failure there needs no rollback; after
it, failure means rolling back to the previous version, which is still installed.
"""

from __future__ import annotations

import abc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgeml.bundle.manifest import parse_semver
from edgeml.bundle.verify import verify_bundle
from edgeml.desired import DesiredModel, DesiredState, parse_desired
from edgeml.errors import EdgeMLError, UpdateError
from edgeml_agent.updates.download import TransientDownloadError, download
from edgeml_agent.updates.health import HealthWatch, Shadow
from edgeml_agent.updates.record import RecordFile, UpdateRecord, now

log = logging.getLogger("edgeml_agent.updates")

TRANSITIONS: dict[tuple[str, str], str] = {
    ("idle", "update"): "downloading",
    ("downloading", "downloaded"): "verifying",
    ("downloading", "fail"): "failed",
    ("verifying", "verified"): "staging",
    ("verifying", "fail"): "failed",
    ("staging", "staged"): "smoke_testing",
    ("staging", "fail"): "failed",
    ("smoke_testing", "smoke_ok"): "switching",
    ("smoke_testing", "fail"): "failed",
    ("switching", "switched"): "probation",
    ("switching", "fail"): "rolling_back",
    ("probation", "healthy"): "committed",
    ("probation", "unhealthy"): "rolling_back",
    ("probation", "fail"): "rolling_back",
    ("committed", "done"): "idle",
    ("rolling_back", "rolled_back"): "failed",
    ("failed", "done"): "idle",
}

# Where a restarted agent continues, by the state it was in when it died.
RESUME: dict[str, str] = {
    "idle": "idle", "downloading": "downloading", "verifying": "verifying", "staging": "staging",
    "smoke_testing": "smoke_testing", "switching": "switching", "probation": "probation",
    "committed": "committed", "rolling_back": "rolling_back", "failed": "failed",
}

# Restarts tolerated inside one state before the update is abandoned: a new model that crashes the
# agent must not boot-loop the device.
MAX_RESTARTS = {"switching": 2, "probation": 2, "smoke_testing": 2}
DEFAULT_MAX_RESTARTS = 5


@dataclass
class UpdateSettings:
    keep_versions: int = 3
    probation_s: float = 30.0
    max_error_rate: float = 0.05
    max_latency_regression: float = 1.0        # new p50 may be at most (1 + this) × the old p50
    min_shadow_agreement: float = 0.0          # 0 = shadowing off unless the desired state asks for it
    shadow_fraction: float = 0.2
    min_requests: int = 20                     # fewer live requests than this: judge on smoke test alone
    download_attempts: int = 5
    download_retry_s: float = 1.0               # first retry pause; doubles up to 30 s
    min_download_speed: float = 1024.0
    target_ids: tuple[str, ...] = ()           # bundles for other targets are refused ("" = any)
    fault: dict[str, str] = field(default_factory=dict)  # test-only fault injection: state -> "hold"/"half"/"mid"


@dataclass
class UpdateContext:
    """What the states may touch. ``agent`` is the running :class:`edgeml_agent.daemon.Agent`."""

    agent: Any
    records: RecordFile
    work_dir: Path
    settings: UpdateSettings
    health: HealthWatch
    report: Callable[..., None]                 # report(kind, **data): events to telemetry / the fleet
    server_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    device_id: str = ""
    staged: Any = None                          # the LoadedModel built in smoke_testing, swapped in switching
    shadow: Shadow | None = None

    def desired(self, record: UpdateRecord) -> tuple[DesiredState, DesiredModel]:
        assert record.desired is not None and record.model is not None
        state = parse_desired(record.desired.encode(), self.agent.trust, device_id=self.device_id,
                              now=0.0)  # expiry was checked on receipt and is checked again before switching
        model = state.model(record.model)
        assert model is not None
        return state, model

    def bundle_path(self, record: UpdateRecord) -> Path:
        return self.work_dir / "downloads" / f"{record.bundle_sha256}.edgepkg"

    def hold(self, state: str, point: str = "hold") -> None:
        """Test-only fault injection: pause here so a test can SIGKILL the agent inside this state."""
        if self.settings.fault.get(state) == point:
            log.warning("fault injection: holding in %s (%s)", state, point)
            (self.work_dir / "holding").write_text(f"{state}:{point}\n")
            time.sleep(3600)


class State(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        """Do this state's one side effect; return the event that leaves it."""


class Downloading(State):
    name = "downloading"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        _, model = ctx.desired(rec)
        url = model.url if "://" in model.url else f"{(ctx.server_url or '').rstrip('/')}/{model.url.lstrip('/')}"
        dest = ctx.bundle_path(rec)
        dest.parent.mkdir(parents=True, exist_ok=True)
        half = model.size // 2
        hook = (lambda have: ctx.hold("downloading", "half") if have >= half else None) \
            if ctx.settings.fault.get("downloading") == "half" else None
        for attempt in range(1, ctx.settings.download_attempts + 1):
            try:
                download(url, dest, expected_size=model.size, expected_sha256=model.sha256, headers=ctx.headers,
                         min_bytes_per_s=ctx.settings.min_download_speed, chunk_hook=hook)
                return "downloaded"
            except TransientDownloadError as exc:
                log.warning("download attempt %d failed: %s", attempt, exc)
                if attempt < ctx.settings.download_attempts:
                    time.sleep(min(ctx.settings.download_retry_s * 2 ** (attempt - 1), 30.0))
        raise UpdateError(f"download of {model.name}@{model.version} failed {ctx.settings.download_attempts} times")


class Verifying(State):
    name = "verifying"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        desired, model = ctx.desired(rec)
        verified = verify_bundle(ctx.bundle_path(rec), ctx.agent.trust)
        m = verified.manifest
        if (m.name, m.version) != (model.name, model.version):
            raise UpdateError(f"the bundle is {m.name}@{m.version}, the desired state asks for {model.name}@{model.version}")
        targets = ctx.settings.target_ids
        if targets and m.target_id not in targets:
            raise UpdateError(f"the bundle is built for target {m.target_id}; this device runs {', '.join(targets)}")
        committed = rec.committed.get(m.name) or rec.previous_version
        if committed and parse_semver(m.version) < parse_semver(committed) and not model.rollback:
            raise UpdateError(f"{m.name}@{m.version} is older than the committed {committed}: anti-rollback refuses it "
                              "(the fleet must ask for this exact version as a rollback)")
        if desired.expires <= now():
            raise UpdateError("the desired state expired while the update was in progress")
        return "verified"


class Staging(State):
    name = "staging"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        ctx.agent.store.install(ctx.bundle_path(rec), activate=False)
        return "staged"


class SmokeTesting(State):
    name = "smoke_testing"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        assert rec.model and rec.target_version
        loaded = ctx.agent.load_model(rec.model, rec.target_version)
        loaded.model.smoke_test()
        ctx.staged = loaded
        return "smoke_ok"


class Switching(State):
    name = "switching"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        assert rec.model and rec.target_version
        desired, _ = ctx.desired(rec)
        if desired.expires <= now():
            raise UpdateError("the desired state expired before the switch")
        if ctx.staged is None:  # resumed after a crash: load it again (verified + smoke-tested again)
            ctx.staged = ctx.agent.load_model(rec.model, rec.target_version)
        ctx.agent.store.set_current(rec.model, rec.target_version)
        ctx.hold(self.name, "mid")
        ctx.agent.registry.swap(rec.model, ctx.staged)  # the old one finishes its requests, then closes
        ctx.staged = None
        return "switched"


class Probation(State):
    name = "probation"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        assert rec.model and rec.target_version
        desired, _ = ctx.desired(rec)
        gates = {**_settings_gates(ctx.settings), **desired.probation}
        if rec.probation_started is None:
            rec.probation_started = now()
            ctx.records.save(rec)
        started_mono = time.monotonic() - (now() - rec.probation_started)
        if gates["min_shadow_agreement"] > 0 and rec.previous_version:
            ctx.shadow = _start_shadow(ctx, rec, gates["shadow_fraction"])
        try:
            deadline = rec.probation_started + float(gates["seconds"])
            while now() < deadline:
                verdict = _judge(ctx, rec, gates, started_mono, final=False)
                if verdict:
                    rec.reason = verdict
                    return "unhealthy"
                time.sleep(min(0.25, max(deadline - now(), 0)))
            verdict = _judge(ctx, rec, gates, started_mono, final=True)
        finally:
            if ctx.shadow is not None:
                ctx.shadow.stop()
        if verdict:
            rec.reason = verdict
            return "unhealthy"
        return "healthy"


class Committed(State):
    name = "committed"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        assert rec.model and rec.target_version
        rec.committed[rec.model] = rec.target_version
        ctx.records.save(rec)
        _prune(ctx, rec.model, keep=ctx.settings.keep_versions)
        ctx.bundle_path(rec).unlink(missing_ok=True)
        return "done"


class RollingBack(State):
    name = "rolling_back"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        assert rec.model
        previous = rec.previous_version
        if previous is None:  # first install of this model: nothing to go back to, stop serving it
            ctx.agent.registry.remove(rec.model)
            return "rolled_back"
        ctx.agent.store.set_current(rec.model, previous)
        if _serving_version(ctx, rec.model) != previous:
            # the previous version is still installed and verified again as it loads
            ctx.agent.registry.swap(rec.model, ctx.agent.load_model(rec.model, previous))
        return "rolled_back"


class Failed(State):
    name = "failed"

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> str:
        ctx.hold(self.name)
        if rec.model and rec.target_version:
            rec.refused[f"{rec.model}@{rec.target_version}"] = rec.reason or "failed"
        if ctx.staged is not None:
            ctx.staged.model.close()
            ctx.staged = None
        if rec.bundle_sha256:
            ctx.bundle_path(rec).unlink(missing_ok=True)
            ctx.bundle_path(rec).with_name(ctx.bundle_path(rec).name + ".part").unlink(missing_ok=True)
        return "done"


STATES: dict[str, State] = {s.name: s for s in (Downloading(), Verifying(), Staging(), SmokeTesting(), Switching(),
                                               Probation(), Committed(), RollingBack(), Failed())}


def _settings_gates(s: UpdateSettings) -> dict[str, Any]:
    return {"seconds": s.probation_s, "max_error_rate": s.max_error_rate,
            "max_latency_regression": s.max_latency_regression, "min_shadow_agreement": s.min_shadow_agreement,
            "shadow_fraction": s.shadow_fraction, "min_requests": s.min_requests}


def _start_shadow(ctx: UpdateContext, rec: UpdateRecord, fraction: float) -> Shadow | None:
    assert rec.model and rec.target_version and rec.previous_version
    try:  # a private instance of the previous version: the served one was retired by the switch
        reference = ctx.agent.load_model(rec.model, rec.previous_version).model
    except EdgeMLError as exc:
        log.warning("cannot shadow-run the previous version: %s", exc)
        return None
    shadow = Shadow(reference, rec.model, rec.target_version, float(fraction))
    ctx.health.shadow = shadow
    return shadow


def _judge(ctx: UpdateContext, rec: UpdateRecord, gates: dict[str, Any], since: float, *, final: bool) -> str | None:
    """None if healthy so far, else why not (with the numbers)."""
    assert rec.model and rec.target_version
    live = ctx.health.health(rec.model, rec.target_version, since=since)
    enough = live.requests >= int(gates["min_requests"])
    if enough and live.error_rate > float(gates["max_error_rate"]):
        return f"error rate {live.error_rate:.1%} over {live.requests} requests exceeds {float(gates['max_error_rate']):.1%}"
    base_p50 = (rec.baseline or {}).get("p50_ms")
    if enough and base_p50 and live.p50_ms is not None:
        limit = base_p50 * (1 + float(gates["max_latency_regression"]))
        if live.p50_ms > limit:
            return f"p50 latency {live.p50_ms:.2f} ms vs {base_p50:.2f} ms before the update (limit {limit:.2f} ms)"
    shadow = ctx.shadow
    min_agree = float(gates["min_shadow_agreement"])
    if final and shadow is not None and min_agree > 0 and shadow.compared >= 5:
        agreement = shadow.agreement or 0.0
        if agreement < min_agree:
            return f"shadow agreement {agreement:.1%} over {shadow.compared} requests is below {min_agree:.1%}"
    return None


def _serving_version(ctx: UpdateContext, model: str) -> str | None:
    try:
        return str(ctx.agent.registry.get(model).version)
    except EdgeMLError:
        return None


def _prune(ctx: UpdateContext, model: str, keep: int) -> None:
    """Keep the newest ``keep`` versions; never delete the current one."""
    store = ctx.agent.store
    current = store.current(model)
    versions = store.versions(model)
    for version in versions[: max(len(versions) - keep, 0)]:
        if version != current:
            store.remove(model, version)


class UpdateMachine:
    """Runs one update at a time from the persisted record; ``step`` is one transition."""

    def __init__(self, ctx: UpdateContext) -> None:
        self.ctx = ctx

    def begin(self, desired: DesiredState, model: DesiredModel) -> None:
        """Start applying ``model`` from ``desired`` (call only in ``idle``)."""
        rec = self.ctx.records.load()
        current = self.ctx.agent.store.current(model.name)
        rec.desired = desired.raw.decode()
        rec.model, rec.target_version, rec.bundle_sha256 = model.name, model.version, model.sha256
        rec.previous_version = current
        rec.reason, rec.probation_started = None, None
        rec.last_serial = max(rec.last_serial, desired.serial)
        if current:
            rec.baseline = self.ctx.health.health(model.name, current).to_json()
        self._transition(rec, "update")

    def run_until_idle(self) -> UpdateRecord:
        rec = self.ctx.records.load()
        while rec.state != "idle":
            rec = self.step(rec)
        return rec

    def step(self, rec: UpdateRecord) -> UpdateRecord:
        state = STATES[rec.state]
        try:
            event = state.on_enter(self.ctx, rec)
        except EdgeMLError as exc:
            rec.reason = str(exc)
            log.error("update %s@%s failed in %s: %s", rec.model, rec.target_version, rec.state, exc)
            event = "fail"
        except Exception as exc:  # a bug or a runtime crash must still end in a safe state
            rec.reason = f"{type(exc).__name__}: {exc}"
            log.exception("update failed in %s", rec.state)
            event = "fail"
        if (rec.state, event) not in TRANSITIONS:
            # e.g. a failure inside rolling_back: keep trying to roll back after a pause
            log.error("no transition from %s on %s; retrying the state", rec.state, event)
            time.sleep(1)
            return rec
        return self._transition(rec, event)

    def _transition(self, rec: UpdateRecord, event: str) -> UpdateRecord:
        source = rec.state
        target = TRANSITIONS[(source, event)]
        rec.history.append([round(now(), 3), source, event, target])
        rec.state, rec.entered_at, rec.restarts = target, now(), 0
        if target == "idle":
            rec.desired, rec.bundle_sha256, rec.probation_started = None, None, None
        self.ctx.records.save(rec)   # persisted before the next state's side effect
        self.ctx.report("update", state=target, transition=event, source=source, model=rec.model,
                        version=rec.target_version, previous=rec.previous_version, reason=rec.reason)
        return rec


def recover_before_load(records: RecordFile, store: Any) -> UpdateRecord:
    """Called before the agent loads its models: count this restart against the state it interrupted
    and, if a new version keeps crashing the agent, point ``current`` back before it is loaded again."""
    rec = records.load()
    if rec.state == "idle":
        return rec
    rec.state = RESUME[rec.state]
    rec.restarts += 1
    limit = MAX_RESTARTS.get(rec.state, DEFAULT_MAX_RESTARTS)
    if rec.restarts > limit and rec.state in ("switching", "probation") and rec.model:
        rec.reason = f"the agent restarted {rec.restarts - 1} times in {rec.state}: rolling back"
        rec.history.append([round(now(), 3), rec.state, "boot_loop", "rolling_back"])
        rec.state, rec.restarts = "rolling_back", 0
        if rec.previous_version:
            store.set_current(rec.model, rec.previous_version)
    elif rec.restarts > limit:
        rec.reason = f"the agent restarted {rec.restarts - 1} times in {rec.state}"
        rec.history.append([round(now(), 3), rec.state, "boot_loop", "failed"])
        rec.state, rec.restarts = "failed", 0
    records.save(rec)
    return rec


def fault_from_env() -> dict[str, str]:
    """EDGEML_UPDATE_FAULT="verifying:hold,downloading:half" — for the crash tests only."""
    out = {}
    for item in filter(None, os.environ.get("EDGEML_UPDATE_FAULT", "").split(",")):
        state, _, point = item.partition(":")
        out[state.strip()] = point.strip() or "hold"
    return out
