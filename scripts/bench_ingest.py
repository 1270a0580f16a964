"""Ingest CPU per telemetry message: the figure that sizes a deployment.

Feeds N realistic MQTT messages — the agent's own envelope (``edgeml.telemetry.messages.envelope``) around
a body made by the agent's own collector (``edgeml_agent.telemetry.collector``), from D devices, every
20th with drift summaries, plus 10 % redeliveries — straight into the ingest writer
(``IngestService._write``: decode, deduplicate, store, roll up) on SQLite and on PostgreSQL, and prints:

    store       msgs  stored  dups   CPU µs/msg  msgs/s

CPU is this process's CPU time (``time.process_time``), so the database server's own work on PostgreSQL
is not in it (the ingest process is what you size; PostgreSQL is sized separately).

    python scripts/bench_ingest.py                 # 20,000 messages from 2,000 devices, both databases
    python scripts/bench_ingest.py --quick         # 3,000 messages
    python scripts/bench_ingest.py --profile       # plus a cProfile of the writer (top 25 by cumulative)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from edgeml.fleet.ingest import IngestService  # noqa: E402
from edgeml.fleet.store import Store, sqlite_url  # noqa: E402
from edgeml.fleet.store.models import Device  # noqa: E402
from edgeml.fleet.store.telemetry_models import DeviceMessage, DriftScore  # noqa: E402
from edgeml.protocol import topic_for  # noqa: E402
from edgeml.telemetry.messages import envelope  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    mid: int = 0


def agent_bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two bodies from the agent's collector: a plain window, and one carrying drift summaries."""
    from edgeml.telemetry.latency import bucket_index, empty_histogram
    from edgeml_agent.metrics import ModelTotals
    from edgeml_agent.registry import Observation
    from edgeml_agent.telemetry.collector import TelemetryCollector

    latency = empty_histogram()
    counts = {"totals": ModelTotals({}, {}, empty_histogram(), 0.0)}
    collector = TelemetryCollector(lambda: {("detector", "1.2.0"): counts["totals"]}, stats_budget=1.0)
    rng = np.random.default_rng(0)
    for ms in rng.gamma(2.0, 2.0, 300):
        latency[bucket_index(float(ms))] += 1
    counts["totals"] = ModelTotals({"ok": 300}, {"runtime": 2}, latency, 1.2)
    plain = collector.snapshot()
    x = rng.normal(0, 1, (4, 16)).astype(np.float32)
    collector.observe(Observation("detector", "1.2.0", 0.004, 200, None, {"x": x}, {"y": x[:, :3]}))
    counts["totals"] = ModelTotals({"ok": 600}, {"runtime": 4}, [2 * c for c in latency], 2.4)
    with_stats = collector.snapshot()
    return plain, with_stats


def messages(n: int, devices: int) -> list[Message]:
    plain, with_stats = agent_bodies()
    out: list[Message] = []
    seqs = [0] * devices
    now = time.time()
    for i in range(n):
        d = i % devices
        seqs[d] += 1
        body = with_stats if i % 20 == 0 else plain
        device = f"dev-{d:05d}"
        out.append(Message(topic_for(device, "telemetry"),
                           envelope(device, seqs[d], now - (n - i) * 0.01, "telemetry", body)))
    redelivered = out[:: 10]   # 10 % come again (a broker redelivery after a lost ack)
    return out + redelivered


def seed(store: Store, devices: int) -> None:
    from edgeml.compiler.stats import reference_stats
    from edgeml.fleet.store.models import Bundle

    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (256, 16)).astype(np.float32)
    ref = reference_stats({"x": x}, {"y": x[:, :3]}, samples=256)
    with store.session() as s:
        s.add(Bundle(id="b" * 64, name="detector", version="1.2.0", target="x86-cpu", runtime="onnxruntime",
                     precision="fp32", key_id="k", size=1, manifest={"reference_stats": ref}, uploaded_by="bench"))
        s.add_all(Device(id=f"dev-{d:05d}", name=f"dev-{d:05d}", tags=[], hardware={}, installed={},
                         mqtt_password_hash="x") for d in range(devices))


def run(url: str, msgs: list[Message], devices: int, batch: int, profile: bool) -> dict[str, Any]:
    store = Store.open(url)
    seed(store, devices)
    service = IngestService(store, "127.0.0.1", 0, "bench", "x", shared=True, client_id="bench-ingest")
    profiler = cProfile.Profile() if profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for i in range(0, len(msgs), batch):
        service._write(msgs[i:i + batch])
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    with store.session() as s:
        stored = s.query(DeviceMessage).count()
        drifted = s.query(DriftScore).count()
    store.close()
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)   # where the CPU goes
    return {"msgs": len(msgs), "stored": stored, "drift_rows": drifted, "dups": service.stats.duplicates,
            "cpu_us": cpu / len(msgs) * 1e6, "rate": len(msgs) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500, help="messages per write (the ingest batch size)")
    parser.add_argument("--quick", action="store_true", help="3,000 messages from 500 devices")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.devices = 3_000, 500
    msgs = messages(args.messages, args.devices)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("sqlite", run(sqlite_url(Path(tmp) / "fleet.db"), msgs, args.devices, args.batch, args.profile)))
    if not args.no_postgres:
        import psycopg

        name = f"edgeml_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
            rows.append(("postgresql", run(url, msgs, args.devices, args.batch, args.profile)))
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\n{'store':<11} {'msgs':>7} {'stored':>7} {'dups':>6} {'drift rows':>10} {'CPU µs/msg':>11} {'msgs/s':>8}")
    for name, r in rows:
        print(f"{name:<11} {r['msgs']:>7} {r['stored']:>7} {r['dups']:>6} {r['drift_rows']:>10} {r['cpu_us']:>11.0f} "
              f"{r['rate']:>8.0f}")
    expected = args.messages
    if any(r["stored"] != expected for _, r in rows):
        sys.exit(f"stored counts differ from the {expected} distinct messages sent")


if __name__ == "__main__":
    main()
