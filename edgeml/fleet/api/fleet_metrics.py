"""The fleet's figures for Prometheus (``GET /metrics``): what ``/metrics`` emits, built from the roll-ups,
the captures' index and the rollouts' rows, never from raw telemetry (a scrape every 15 s must stay cheap
on a fleet of 10,000 devices).

Names follow Prometheus conventions: an ``edgeml_fleet_`` prefix, ``_total`` on counters, base units
(seconds). The older ``edgeml_fleet_model_*`` gauges in ms/per-second stay: dashboards and tests use them.
``deploy/prometheus/edgeml-rules.yml`` and ``deploy/grafana/edgeml-fleet.json`` query these names; a test
checks every name they use is emitted here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeml.fleet.api.devices import online_clause
from edgeml.fleet.store.capture_models import Capture
from edgeml.fleet.store.models import Bundle, Device, Rollout, RolloutDevice
from edgeml.fleet.store.rollup_models import DeviceVersion, VersionMinute
from edgeml.telemetry.latency import merge, percentile

Labels = dict[str, str]
# the look-back of the per-version gauges: a scrape interval's worth would be noisy at low request rates
WINDOW = timedelta(minutes=5)
# a device "runs" a version when it reported a window of it this recently (devices send no window for an
# idle model, so a shorter span would drop quiet devices)
RUNNING = timedelta(hours=1)
# finished rollouts stay on /metrics this long (a dashboard shows the last outcome), then drop off
FINISHED_KEPT = timedelta(days=1)
LATENCY_QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def text(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{self.name}{{{label_text}}} {value}" if label_text else f"{self.name} {value}")
        return lines


def render(families: Iterable[Family]) -> str:
    return "\n".join(line for f in families for line in f.text()) + "\n"


def version_families(session: Session, now: datetime,
                     online_window_s: float) -> list[Family]:
    """Per model version: devices running it (online/offline), lifetime requests and errors, latency
    quantiles over :data:`WINDOW` in seconds."""
    dv = DeviceVersion
    online = online_clause(online_window_s, now)
    devices = Family("edgeml_fleet_model_devices", "gauge",
                     f"devices that reported this model version in the last {RUNNING.seconds // 60} minutes, "
                     "by online state")
    query = (select(dv.model, dv.version, online, func.count()).join(Device, Device.id == dv.device_id)
             .where(dv.last_ts >= now - RUNNING, Device.revoked_at.is_(None))
             .group_by(dv.model, dv.version, online))
    for m, v, is_online, n in session.execute(query):
        devices.samples.append(({"model": m, "version": v, "state": "online" if is_online else "offline"}, int(n)))
    requests = Family("edgeml_fleet_model_requests_total", "counter",
                      "inference requests the devices reported for this model version (all time)")
    errors = Family("edgeml_fleet_model_errors_total", "counter",
                    "failed inference requests the devices reported for this model version (all time)")
    for m, v, r, e in session.execute(select(dv.model, dv.version, func.sum(dv.requests), func.sum(dv.errors))
                                      .group_by(dv.model, dv.version).order_by(dv.model, dv.version)):
        requests.samples.append(({"model": m, "version": v}, int(r or 0)))
        errors.samples.append(({"model": m, "version": v}, int(e or 0)))
    return [devices, requests, errors, _latency_family(session, now)]


def _latency_family(session: Session, now: datetime) -> Family:
    vm = VersionMinute
    histograms: dict[tuple[str, str], list[list[int]]] = {}
    since = (now - WINDOW).replace(second=0, microsecond=0)
    for m, v, latency in session.execute(select(vm.model, vm.version, vm.latency).where(vm.minute >= since)):
        histograms.setdefault((m, v), []).append(latency)
    family = Family("edgeml_fleet_model_latency_seconds", "gauge",
                    "latency quantile across devices over the last 5 minutes, in seconds (upper bound of the "
                    "histogram bucket holding it); absent when the version served nothing")
    for (m, v), hs in sorted(histograms.items()):
        merged = merge(hs)
        for q in LATENCY_QUANTILES:
            ms = percentile(merged, q * 100)
            if ms is not None:
                family.samples.append(({"model": m, "version": v, "quantile": f"{q:g}"}, ms / 1000))
    return family


def capture_family(session: Session) -> Family:
    family = Family("edgeml_fleet_captures", "gauge",
                    "captured samples stored in the fleet, by model version and trigger (retention removes "
                    "old ones, so this is a gauge)")
    c = Capture
    for m, v, trigger, n in session.execute(select(c.model, c.version, c.trigger, func.count())
                                            .group_by(c.model, c.version, c.trigger)
                                            .order_by(c.model, c.version, c.trigger)):
        family.samples.append(({"model": m, "version": v, "trigger": trigger}, int(n)))
    return family


def rollout_families(session: Session, now: datetime) -> list[Family]:
    """One ``edgeml_fleet_rollout_state`` sample (value 1) per rollout with its state as a label, its
    current wave, and when it last made progress (a wave started, or a device of it changed state): a
    running rollout whose progress time stops moving is stuck."""
    state = Family("edgeml_fleet_rollout_state", "gauge", "1 for each rollout, labelled with its state")
    wave = Family("edgeml_fleet_rollout_wave", "gauge", "the wave a rollout is at (1-based)")
    progress = Family("edgeml_fleet_rollout_last_progress_timestamp_seconds", "gauge",
                      "unix time of a rollout's last progress: its last update, wave start or device change")
    last_device = (select(RolloutDevice.rollout_id, func.max(RolloutDevice.updated_at).label("at"))
                   .group_by(RolloutDevice.rollout_id).subquery())
    query = (select(Rollout, Bundle.name, last_device.c.at).join(Bundle, Bundle.id == Rollout.bundle_id)
             .outerjoin(last_device, last_device.c.rollout_id == Rollout.id)
             .where((Rollout.state.not_in(("completed", "aborted")))
                    | (func.coalesce(Rollout.updated_at, Rollout.created_at) >= now - FINISHED_KEPT))
             .order_by(Rollout.created_at))
    for r, model, device_at in session.execute(query):
        labels = {"rollout": r.id, "model": model, "version": r.version or ""}
        state.samples.append(({**labels, "state": r.state}, 1))
        wave.samples.append((labels, r.current_wave + 1))
        times = [t for t in (r.created_at, r.updated_at, r.wave_started_at, r.observe_started_at, device_at) if t]
        progress.samples.append((labels, max(_unix(t) for t in times)))
    return [state, wave, progress]


def _unix(t: datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
