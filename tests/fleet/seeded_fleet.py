"""A fleet in-process with some of everything ``/metrics`` reports: telemetry of two versions from enrolled
devices (stored by the ingest code path), a capture, a bundle and a running rollout. Shared by the metrics,
history and Prometheus/Grafana tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from edgeml.fleet.store.capture_models import Capture
from edgeml.fleet.store.models import Bundle, Rollout
from edgeml.fleet.store.rollup_models import DeviceVersion
from edgeml.fleet.store.telemetry_models import ModelHourly
from edgeml.fleet.telemetry_store import Envelope, store_messages
from edgeml.telemetry.latency import bucket_index, empty_histogram
from tests.fleet.conftest import Fleet


def window(version: str, requests: int, errors: int, ms: float) -> dict:
    h = empty_histogram()
    h[bucket_index(ms)] = requests
    return {"window_s": 10.0, "models": [{"model": "cls", "version": version, "requests": requests,
                                          "errors": {"x": errors} if errors else {},
                                          "latency_ms": {"buckets": h, "sum": ms * requests}}]}


def seed(fleet: Fleet, now: datetime) -> list[str]:
    """Two enrolled devices: one on cls@1 (10 minutes ago and now, nothing in between), one on cls@2 (now).
    Returns the device ids."""
    ids = [str(fleet.enroll()["device_id"]) for _ in range(2)]
    store = fleet.server.store
    with store.session() as s:
        store_messages(s, [Envelope(ids[0], 1, now - timedelta(minutes=10), "telemetry", window("1", 100, 0, 4.0)),
                           Envelope(ids[0], 2, now, "telemetry", window("1", 50, 5, 40.0)),
                           Envelope(ids[1], 1, now, "telemetry", window("2", 20, 0, 1.0))])
        # a drift score needs the bundle's reference statistics (tests/fleet/test_drift_e2e.py computes real
        # ones); here the roll-up holds one as ingest would have stored it
        s.execute(update(DeviceVersion).where(DeviceVersion.version == "2").values(drift=0.4))
        s.execute(update(ModelHourly).where(ModelHourly.version == "2").values(drift=0.4))
        s.add(Capture(device_id=ids[1], capture_id="c1", model="cls", version="2", trigger="drift", figures={},
                      tensors={}, captured_at=now, received_at=now, size=10, file_sha256="0" * 64))
        s.add(Bundle(id="b" * 64, name="cls", version="2", target="x86_64", runtime="onnxruntime", precision="fp32",
                     key_id="k", size=1, manifest={}, uploaded_by="test"))
        s.flush()
        s.add(Rollout(id="r-1", bundle_id="b" * 64, state="running", version="2", selector={}, waves=[10, 100],
                      gates={}, probation={}, created_at=now - timedelta(hours=2), updated_at=now - timedelta(hours=1),
                      wave_started_at=now - timedelta(hours=1)))
    return ids


def utcnow() -> datetime:
    return datetime.now(UTC)
