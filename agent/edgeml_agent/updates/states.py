"""The update states: each a small object whose ``on_enter`` does that state's one side effect and
returns the event that leaves it (the graph itself is :data:`edgeml_agent.updates.machine.TRANSITIONS`).

Every side effect is idempotent, which is why a restarted agent simply re-enters the state it saved:
downloading resumes the partial file with HTTP Range, verifying and smoke testing run again (the
loaded model died with the process), staging finds an identical version already unpacked (unpacking
goes through a temporary directory and a rename), switching loads the new version again and points
``current`` at it once more, probation keeps its persisted start time, committed and rolling_back
rewrite the same pointer and record, failed records the refusal again.
"""

from __future__ import annotations

import abc
import logging
import time
from pathlib import Path
from typing import ClassVar

from edgeml.bundle.manifest import parse_semver
from edgeml.bundle.verify import verify_bundle
from edgeml.desired import DesiredModel
from edgeml.errors import EdgeMLError, UpdateError
from edgeml.fileio import sha256_file
from edgeml.protocol import UpdateEvent, UpdateState
from edgeml_agent.updates.context import UpdateContext
from edgeml_agent.updates.delta import DeltaUnavailable, fetch_delta, keep_installed
from edgeml_agent.updates.download import TransientDownloadError, credentials_for, download, download_sources
from edgeml_agent.updates.health import Shadow
from edgeml_agent.updates.record import UpdateRecord, now
from edgeml_agent.updates.settings import UpdateSettings

log = logging.getLogger("edgeml_agent.updates")

S, E = UpdateState, UpdateEvent


class State(abc.ABC):
    name: ClassVar[UpdateState]

    @abc.abstractmethod
    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        """Do this state's one side effect; return the event that leaves it."""


class Downloading(State):
    name = S.DOWNLOADING

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        _, model = ctx.desired(rec)
        dest = ctx.bundle_path(rec)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and sha256_file(dest) in (model.sha256, model.tar_sha256):
            return E.DOWNLOADED   # resumed after the download (or the delta's rebuild) completed
        if ctx.settings.deltas and ctx.server_url:
            try:
                fetch_delta(ctx.services.http, ctx.server_url, ctx.headers, model, ctx.work_dir, dest)
                return E.DOWNLOADED
            except DeltaUnavailable as exc:
                log.info("no delta for %s@%s, downloading the whole bundle: %s", model.name, model.version, exc)
        sources = download_sources(model, ctx.server_url)
        for i, url in enumerate(sources):
            last = i == len(sources) - 1
            try:
                self._fetch(ctx, model, url, dest, attempts=ctx.settings.download_attempts if last else 2)
                return E.DOWNLOADED
            except UpdateError as exc:
                if last:
                    raise
                log.warning("bundle source %s failed (%s); trying %s", url, exc, sources[i + 1])
                dest.with_name(dest.name + ".part").unlink(missing_ok=True)  # never mix two servers' bytes
        raise AssertionError("unreachable: the last source returns or raises")

    def _fetch(self, ctx: UpdateContext, model: DesiredModel, url: str, dest: Path, *, attempts: int) -> None:
        def progress(have: int) -> None:
            ctx.checkpoint(self.name, f"bytes={have}/{model.size}")

        for attempt in range(1, attempts + 1):
            try:
                download(ctx.services.http, url, dest, expected_size=model.size, expected_sha256=model.sha256,
                         headers=credentials_for(url, ctx.server_url, ctx.headers),
                         min_bytes_per_s=ctx.settings.min_download_speed, progress=progress)
                return
            except TransientDownloadError as exc:
                log.warning("download attempt %d failed: %s", attempt, exc)
                if attempt < attempts:
                    time.sleep(min(ctx.settings.download_retry_s * 2 ** (attempt - 1), 30.0))
        raise UpdateError(f"download of {model.name}@{model.version} failed {attempts} times")


class Verifying(State):
    name = S.VERIFYING

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        desired, model = ctx.desired(rec)
        verified = verify_bundle(ctx.bundle_path(rec), ctx.services.trust.bundles)
        m = verified.manifest
        if (m.name, m.version) != (model.name, model.version):
            raise UpdateError(f"the bundle is {m.name}@{m.version}, the desired state asks for "
                              f"{model.name}@{model.version}")
        targets = ctx.settings.target_ids
        if targets and m.target_id not in targets:
            raise UpdateError(f"the bundle is built for target {m.target_id}; this device runs {', '.join(targets)}")
        committed = rec.committed.get(m.name) or rec.previous_version
        if committed and parse_semver(m.version) < parse_semver(committed) and not model.rollback:
            raise UpdateError(f"{m.name}@{m.version} is older than the committed {committed}: anti-rollback refuses "
                              "it (the fleet must ask for this exact version as a rollback)")
        if desired.expires <= now():
            raise UpdateError("the desired state expired while the update was in progress")
        return E.VERIFIED


class Staging(State):
    name = S.STAGING

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        ctx.services.store.install(ctx.bundle_path(rec), activate=False)
        return E.STAGED


class SmokeTesting(State):
    name = S.SMOKE_TESTING

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        assert rec.model and rec.target_version
        loaded = ctx.services.load_model(rec.model, rec.target_version)
        loaded.model.smoke_test()
        ctx.staged = loaded
        return E.SMOKE_OK


class Switching(State):
    name = S.SWITCHING

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        assert rec.model and rec.target_version
        desired, _ = ctx.desired(rec)
        if desired.expires <= now():
            raise UpdateError("the desired state expired before the switch")
        if ctx.staged is None:  # resumed after a crash: load it again (verified + smoke-tested again)
            ctx.staged = ctx.services.load_model(rec.model, rec.target_version)
        ctx.services.store.set_current(rec.model, rec.target_version)
        ctx.checkpoint(self.name, "mid")
        ctx.services.registry.swap(rec.model, ctx.staged)  # the old one finishes its requests, then closes
        ctx.staged = None
        return E.SWITCHED


class Probation(State):
    name = S.PROBATION

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        assert rec.model and rec.target_version
        desired, _ = ctx.desired(rec)
        gates = {**_settings_gates(ctx.settings), **{k: float(v) for k, v in desired.probation.items()}}
        if rec.probation_started is None:
            rec.probation_started = now()
            ctx.records.save(rec)
        started_mono = time.monotonic() - (now() - rec.probation_started)
        if gates["min_shadow_agreement"] > 0 and rec.previous_version:
            ctx.shadow = _start_shadow(ctx, rec, gates["shadow_fraction"])
        try:
            deadline = rec.probation_started + gates["seconds"]
            while now() < deadline:
                verdict = _judge(ctx, rec, gates, started_mono, final=False)
                if verdict:
                    rec.reason = verdict
                    return E.UNHEALTHY
                time.sleep(min(0.25, max(deadline - now(), 0)))
            verdict = _judge(ctx, rec, gates, started_mono, final=True)
        finally:
            if ctx.shadow is not None:
                # let the private copy of the previous version go: left attached, every later request
                # would still be offered to it and its runtime session would stay open
                ctx.shadow.stop()
                ctx.shadow.reference.close()
                ctx.shadow = ctx.health.shadow = None
        if verdict:
            rec.reason = verdict
            return E.UNHEALTHY
        return E.HEALTHY


class Committed(State):
    name = S.COMMITTED

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        assert rec.model and rec.target_version
        rec.committed[rec.model] = rec.target_version
        ctx.records.save(rec)
        _prune(ctx, rec.model, keep=ctx.settings.keep_versions)
        if ctx.settings.deltas:   # the base of the next update's delta
            keep_installed(ctx.work_dir, rec.model, rec.target_version, ctx.bundle_path(rec))
        ctx.bundle_path(rec).unlink(missing_ok=True)
        return E.DONE


class RollingBack(State):
    name = S.ROLLING_BACK

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        assert rec.model
        time.sleep(retry_pause(rec))   # a rollback that failed is retried, but not in a tight loop
        previous = rec.previous_version
        registry = ctx.services.registry
        if previous is None:  # first install of this model: nothing to go back to, stop serving it
            registry.remove(rec.model)
            return E.ROLLED_BACK
        ctx.services.store.set_current(rec.model, previous)
        if _serving_version(ctx, rec.model) != previous:
            # the previous version is still installed and verified again as it loads
            registry.swap(rec.model, ctx.services.load_model(rec.model, previous))
        return E.ROLLED_BACK


class Failed(State):
    name = S.FAILED

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> UpdateEvent:
        if rec.model and rec.target_version:
            rec.refused[f"{rec.model}@{rec.target_version}"] = rec.reason or "failed"
        if ctx.staged is not None:
            ctx.staged.model.close()
            ctx.staged = None
        if rec.bundle_sha256:
            bundle = ctx.bundle_path(rec)
            bundle.unlink(missing_ok=True)
            bundle.with_name(bundle.name + ".part").unlink(missing_ok=True)
        return E.DONE


STATES: dict[UpdateState, State] = {s.name: s for s in (
    Downloading(), Verifying(), Staging(), SmokeTesting(), Switching(), Probation(), Committed(), RollingBack(),
    Failed())}


def retry_pause(rec: UpdateRecord) -> float:
    """Seconds to wait before rolling back again: 0 the first time, then 1, 2, 4, … up to 60 after
    each consecutive failed attempt (the trailing ``rolling_back --fail--> rolling_back`` transitions)."""
    failures = 0
    for _, source, event, target in reversed(rec.history):
        if (source, event, target) != (S.ROLLING_BACK, E.FAIL, S.ROLLING_BACK):
            break
        failures += 1
    return 0.0 if failures == 0 else min(2.0 ** (failures - 1), 60.0)


def _settings_gates(s: UpdateSettings) -> dict[str, float]:
    return {"seconds": s.probation_s, "max_error_rate": s.max_error_rate,
            "max_latency_regression": s.max_latency_regression, "min_shadow_agreement": s.min_shadow_agreement,
            "shadow_fraction": s.shadow_fraction, "min_requests": s.min_requests}


def _start_shadow(ctx: UpdateContext, rec: UpdateRecord, fraction: float) -> Shadow | None:
    assert rec.model and rec.target_version and rec.previous_version
    try:  # a private instance of the previous version: the served one was retired by the switch
        # on ONE thread: the live version owns the cores; a second full thread pool would fight it for them
        reference = ctx.services.load_model(rec.model, rec.previous_version, num_threads=1).model
    except EdgeMLError as exc:
        log.warning("cannot shadow-run the previous version: %s", exc)
        return None
    shadow = Shadow(reference, rec.model, rec.target_version, fraction, on_disagree=ctx.health.shadow_disagreed)
    ctx.health.shadow = shadow
    return shadow


def _judge(ctx: UpdateContext, rec: UpdateRecord, gates: dict[str, float], since: float, *,
           final: bool) -> str | None:
    """None if healthy so far, else why not (with the numbers)."""
    assert rec.model and rec.target_version
    live = ctx.health.health(rec.model, rec.target_version, since=since)
    enough = live.requests >= int(gates["min_requests"])
    if enough and live.error_rate > gates["max_error_rate"]:
        return (f"error rate {live.error_rate:.1%} over {live.requests} requests exceeds "
                f"{gates['max_error_rate']:.1%}")
    base_p50 = rec.baseline.get("p50_ms")
    if enough and base_p50 and live.p50_ms is not None:
        limit = base_p50 * (1 + gates["max_latency_regression"])
        if live.p50_ms > limit:
            return f"p50 latency {live.p50_ms:.2f} ms vs {base_p50:.2f} ms before the update (limit {limit:.2f} ms)"
    shadow = ctx.shadow
    min_agree = gates["min_shadow_agreement"]
    if final and shadow is not None and min_agree > 0 and shadow.compared >= 5:
        agreement = shadow.agreement or 0.0
        if agreement < min_agree:
            return f"shadow agreement {agreement:.1%} over {shadow.compared} requests is below {min_agree:.1%}"
    return None


def _serving_version(ctx: UpdateContext, model: str) -> str | None:
    try:
        return str(ctx.services.registry.get(model).version)
    except EdgeMLError:
        return None


def _prune(ctx: UpdateContext, model: str, keep: int) -> None:
    """Keep the newest ``keep`` versions; never delete the current one."""
    store = ctx.services.store
    current = store.current(model)
    versions = store.versions(model)
    for version in versions[: max(len(versions) - keep, 0)]:
        if version != current:
            store.remove(model, version)
