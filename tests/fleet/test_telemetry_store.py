"""Telemetry in the store: exactly once by (device, seq), derived windows, roll-ups, drift and health —
on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edgeml.compiler.stats import reference_stats
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import Bundle, Device
from edgeml.fleet.store.telemetry_models import DeviceEvent, DeviceMessage, ModelHourly, ModelWindow
from edgeml.fleet.telemetry_store import (
    Envelope,
    fleet_health,
    prune,
    record_status,
    store_messages,
    update_events,
    version_health,
)
from edgeml.telemetry.drift import RunningSummary
from edgeml.telemetry.latency import bucket_index, empty_histogram

NOW = datetime.now(UTC)


def _latency(*ms: float) -> list[int]:
    h = empty_histogram()
    for v in ms:
        h[bucket_index(v)] += 1
    return h


def _telemetry(device: str, seq: int, *, requests: int, errors: int, ms: float, stats: dict | None = None,
               version: str = "1.0.0") -> Envelope:
    body = {"window_s": 10.0, "models": [{
        "model": "m", "version": version, "requests": requests, "errors": {"runtime": errors} if errors else {},
        "latency_ms": {"buckets": _latency(*[ms] * requests), "sum": ms * requests},
        "stats": stats or {"samples": 0, "inputs": {}, "outputs": {}}, "runtime": "onnxruntime", "device": "CPU",
        "fallback": False}], "system": {"cpu_percent": 5.0}}
    return Envelope(device, seq, NOW - timedelta(seconds=30) + timedelta(seconds=seq), "telemetry", body)


def _store(db_url: str) -> Store:
    store = Store.open(db_url)
    with store.session() as s:
        for d in ("dev-a", "dev-b"):
            s.add(Device(id=d, name=d, tags=[], hardware={}, installed={}, mqtt_password_hash="x"))
    return store


def test_each_sequence_number_is_stored_once_whatever_is_redelivered(db_url: str) -> None:
    store = _store(db_url)
    batch = [_telemetry("dev-a", s, requests=10, errors=0, ms=2.0) for s in (1, 2, 3)]
    with store.session() as s:
        assert store_messages(s, [*batch, batch[1]]) == 3          # a duplicate inside one batch
    with store.session() as s:
        assert store_messages(s, [batch[2], _telemetry("dev-a", 4, requests=1, errors=0, ms=2.0)]) == 1
        assert store_messages(s, [_telemetry("dev-b", 1, requests=5, errors=0, ms=2.0)]) == 1  # per-device numbering
    with store.session() as s:
        keys = sorted(s.query(DeviceMessage.device_id, DeviceMessage.seq).all())
        assert keys == [("dev-a", 1), ("dev-a", 2), ("dev-a", 3), ("dev-a", 4), ("dev-b", 1)]
        assert s.query(ModelWindow).count() == 5                   # derived rows follow the dedup too
        hourly = s.query(ModelHourly).filter_by(device_id="dev-a").all()
        assert sum(h.requests for h in hourly) == 31
        assert s.get(Device, "dev-a").last_seen is not None
    store.close()


def test_version_health_aggregates_across_devices(db_url: str) -> None:
    store = _store(db_url)
    with store.session() as s:
        store_messages(s, [_telemetry("dev-a", 1, requests=90, errors=0, ms=1.5),
                           _telemetry("dev-b", 1, requests=10, errors=10, ms=40.0),
                           _telemetry("dev-b", 2, requests=5, errors=0, ms=2.0, version="2.0.0")])
    with store.session() as s:
        h = version_health(s, model="m", version="1.0.0", device_ids=None, since=NOW - timedelta(minutes=5))
        assert (h.devices, h.requests, h.errors) == (2, 100, 10)
        assert h.error_rate == 0.1
        assert h.p50_ms == 2.0 and h.p95_ms == 50.0
        only_a = version_health(s, model="m", version="1.0.0", device_ids=["dev-a"], since=NOW - timedelta(minutes=5))
        assert (only_a.devices, only_a.errors) == (1, 0)
    store.close()


def test_drift_is_scored_against_the_bundle_reference(db_url: str) -> None:
    store = _store(db_url)
    rng = np.random.default_rng(0)
    ref = reference_stats({"x": rng.normal(0, 1, (512, 4)).astype(np.float32)},
                          {"y": rng.normal(0, 1, (512, 3)).astype(np.float32)}, samples=512)
    with store.session() as s:
        s.add(Bundle(id="b" * 64, name="m", version="1.0.0", target="x86-cpu", runtime="onnxruntime",
                     precision="fp32", key_id="k", size=1, manifest={"reference_stats": ref}, uploaded_by="t"))

    def live(shift: float) -> dict:
        sx = RunningSummary(ref["inputs"]["x"])
        sx.update(rng.normal(shift, 1, (256, 4)).astype(np.float32))
        return {"samples": 64, "inputs": {"x": sx.to_json()}, "outputs": {}}

    with store.session() as s:
        store_messages(s, [_telemetry("dev-a", 1, requests=64, errors=0, ms=1.0, stats=live(0.0)),
                           _telemetry("dev-b", 1, requests=64, errors=0, ms=1.0, stats=live(3.0))])
    with store.session() as s:
        calm = version_health(s, model="m", version="1.0.0", device_ids=["dev-a"], since=NOW - timedelta(hours=1))
        shifted = version_health(s, model="m", version="1.0.0", device_ids=["dev-b"], since=NOW - timedelta(hours=1))
        assert calm.drift is not None and calm.drift < 0.1
        assert shifted.drift is not None and shifted.drift > 1.0
    store.close()


def test_fleet_health_drift_is_that_of_the_devices_in_the_window(db_url: str) -> None:
    store = _store(db_url)
    rng = np.random.default_rng(1)
    ref = reference_stats({"x": rng.normal(0, 1, (512, 4)).astype(np.float32)}, {}, samples=512)
    with store.session() as s:
        s.add(Bundle(id="c" * 64, name="m", version="1.0.0", target="x86-cpu", runtime="onnxruntime",
                     precision="fp32", key_id="k", size=1, manifest={"reference_stats": ref}, uploaded_by="t"))

    def live(shift: float) -> dict:
        sx = RunningSummary(ref["inputs"]["x"])
        sx.update(rng.normal(shift, 1, (256, 4)).astype(np.float32))
        return {"samples": 64, "inputs": {"x": sx.to_json()}, "outputs": {}}

    # given dev-b drifted hard on 1.0.0 two hours ago (and sent nothing since), dev-a is calm now
    # (timestamps from the test's own clock: the module's NOW may be minutes old when this test runs)
    now = datetime.now(UTC)
    old = replace(_telemetry("dev-b", 1, requests=64, errors=0, ms=1.0, stats=live(3.0)), ts=now - timedelta(hours=2))
    calm = replace(_telemetry("dev-a", 1, requests=64, errors=0, ms=1.0, stats=live(0.0)), ts=now)
    with store.session() as s:
        store_messages(s, [old, calm])
    with store.session() as s:
        # then the last ten minutes show one device, and its drift, not the old one's
        [h] = fleet_health(s, now - timedelta(minutes=10))
        assert h.devices == 1 and h.drift is not None and h.drift < 0.1
        assert h.requests_per_s == pytest.approx(64 / 600, rel=1e-2)   # over the ten minutes, not the window
        # while over three hours both count, and the worst drift is dev-b's
        [h3] = fleet_health(s, now - timedelta(hours=3))
        assert h3.devices == 2 and h3.drift is not None and h3.drift > 1.0
    store.close()


def test_update_events_status_and_retention(db_url: str) -> None:
    store = _store(db_url)
    old = Envelope("dev-a", 1, NOW - timedelta(days=10), "event", {"event": "update", "state": "downloading"})
    new = Envelope("dev-a", 2, NOW, "event",
                   {"event": "update", "state": "committed", "model": "m", "version": "2.0.0"})
    with store.session() as s:
        store_messages(s, [old, new])
        record_status(s, "dev-b", "offline")
    with store.session() as s:
        events = update_events(s, device_ids=["dev-a"], since=NOW - timedelta(minutes=1))
        assert [e.body["state"] for e in events] == ["committed"]
        assert s.get(Device, "dev-a").installed == {"bundles": {"m": "2.0.0"}}
        assert s.get(Device, "dev-b").mqtt_status == "offline"
    with store.session() as s:
        s.query(DeviceMessage).filter_by(seq=1).update({"received_at": NOW - timedelta(days=10)})
    with store.session() as s:
        assert prune(s, timedelta(days=7)) == 2      # the old raw message and its event
        assert s.query(DeviceEvent).count() == 1
    store.close()


def test_malformed_envelopes_are_refused(tmp_path: Path) -> None:
    import pytest

    good = {"schema": 1, "device": "d", "seq": 3, "ts": 1.0, "kind": "event", "body": {}}
    assert Envelope.parse("d", good).seq == 3
    for bad in ({**good, "device": "other"}, {**good, "seq": 0}, {**good, "schema": 2}, {**good, "body": []},
                {**good, "seq": "3"}):
        with pytest.raises(ValueError):
            Envelope.parse("d", bad)
