"""Roll-ups under the conditions ingest meets: redeliveries, two ingest writers storing the same messages
at once, an existing database upgraded to them, and raw retention in bounded deletes — on SQLite and on
the real PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select

from edgeml.fleet.ingest import IngestService
from edgeml.fleet.store import Store, upgrade
from edgeml.fleet.store.rollup_models import DeviceVersion, VersionMinute
from edgeml.fleet.store.telemetry_models import DeviceMessage, ModelWindow
from edgeml.fleet.telemetry_store import (
    Envelope,
    fleet_health,
    prune_in_batches,
    prune_step,
    store_messages,
    version_health,
)
from edgeml.protocol import topic_for
from edgeml.telemetry.latency import bucket_index, empty_histogram
from edgeml.telemetry.messages import envelope

DEVICES, SEQS = 8, 25


def _body(seq: int, ms: float) -> dict:
    h = empty_histogram()
    h[bucket_index(ms)] = seq
    return {"window_s": 10.0, "models": [{"model": "m", "version": "1", "requests": seq, "errors": {"e": seq % 3},
                                          "latency_ms": {"buckets": h, "sum": ms * seq}}]}


def _wait(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "ingest did not take the messages in time"
        time.sleep(0.05)


def test_two_writers_given_the_same_messages_count_each_once(db_url: str) -> None:
    # given two ingest writers on one database, each handed every message (as after a redelivery to the
    # other worker of a shared subscription), one in order, one shuffled and running ahead
    store = Store.open(db_url)
    now = time.time()
    messages = [(topic_for(f"dev-{d}", "telemetry"), envelope(f"dev-{d}", s, now - 60 + s, "telemetry",
                                                               _body(s, 1.0 + d)))
                for d in range(DEVICES) for s in range(1, SEQS + 1)]
    services = [IngestService(store, "", 0, "", "", shared=True, client_id=name, batch_size=size)
                for name, size in (("writer-a", 20), ("writer-b", 17))]
    shuffled = list(messages)
    random.Random(7).shuffle(shuffled)
    a, b = services
    for service in services:
        service.start_tapped()
    # b first stores a random half, so a's in-order batches hold new and already stored messages alike
    for topic, payload in shuffled[:len(messages) // 2]:
        b.offer(topic, payload)
    _wait(lambda: b.stats.stored == len(messages) // 2)
    threads = [threading.Thread(target=lambda s=s, f=f: [s.offer(t, p) for t, p in f])
               for s, f in ((a, messages), (b, shuffled))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait(lambda: sum(s.stats.stored + s.stats.duplicates for s in services) == 2.5 * len(messages))
    for service in services:
        service.stop()
    # then raw rows, per-device and per-minute roll-ups each count every message once
    once = DEVICES * sum(range(1, SEQS + 1))
    with store.reader() as s:
        assert s.execute(select(func.count()).select_from(DeviceMessage)).scalar() == len(messages)
        assert s.execute(select(func.sum(DeviceVersion.requests))).scalar() == once
        assert s.execute(select(func.sum(DeviceVersion.windows))).scalar() == len(messages)
        assert s.execute(select(func.sum(VersionMinute.requests))).scalar() == once
        # and health from the roll-ups says what the raw windows say
        since = datetime.now(UTC) - timedelta(minutes=10)
        [rolled] = fleet_health(s, since)
        raw = version_health(s, model="m", version="1", device_ids=None, since=since)
        errors = DEVICES * sum(q % 3 for q in range(1, SEQS + 1))
        assert (rolled.devices, rolled.requests, rolled.errors) == (raw.devices, raw.requests, raw.errors) == \
               (DEVICES, once, errors)
        assert (rolled.p50_ms, rolled.p95_ms) == (raw.p50_ms, raw.p95_ms)
    assert sum(service.stats.stored for service in services) == len(messages)
    store.close()


def test_upgrade_rolls_up_the_windows_already_stored(db_url: str) -> None:
    # given a fleet database at revision 0004 holding telemetry windows
    store = Store.open(db_url, migrate=False)
    upgrade(store.engine, "0004")
    ts = datetime.now(UTC).replace(second=30, microsecond=0) - timedelta(minutes=1)
    h = empty_histogram()
    h[3] = 5
    with store.engine.begin() as conn:
        conn.execute(insert(ModelWindow.__table__), [
            {"device_id": d, "seq": s, "model": "m", "version": "1", "ts": ts, "window_s": 10.0, "requests": 5,
             "errors": 1, "latency": h, "stats": {}, "runtime": None, "accelerator": None, "fallback": None}
            for d in ("dev-a", "dev-b") for s in (1, 2)])
    # when it is upgraded
    upgrade(store.engine)
    # then health over them comes from the new roll-ups
    with store.reader() as s:
        [h1] = fleet_health(s, ts - timedelta(minutes=5))
        assert (h1.devices, h1.requests, h1.errors, h1.p95_ms) == (2, 20, 4, 2.0)
    store.close()


def test_retention_deletes_in_bounded_rounds(db_url: str) -> None:
    # given seven raw messages past retention and one recent
    store = Store.open(db_url)
    old = datetime.now(UTC) - timedelta(days=30)
    with store.session() as s:
        store_messages(s, [Envelope("dev-a", q, old, "telemetry", {"models": []}) for q in range(1, 9)])
        s.execute(DeviceMessage.__table__.update().where(DeviceMessage.seq < 8).values(received_at=old))
    # when one round runs with rounds of three rows, then only three go
    with store.session() as s:
        assert prune_step(s, timedelta(days=7), batch=3) == 3
    # and rounds committed one by one remove the rest, never the recent message
    assert prune_in_batches(store, timedelta(days=7), batch=3) == 4
    with store.reader() as s:
        assert [q for (q,) in s.execute(select(DeviceMessage.seq))] == [8]
    store.close()
