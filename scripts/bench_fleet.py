#!/usr/bin/env python3
"""Fleet benchmark: N simulated devices against a real fleet server, one table.

The devices enrol through the real enrolment API (one-time tokens, per-device credentials), connect to
the broker each with its own credentials, send the agent's real telemetry envelope every 10 s and a
heartbeat every 30 s, report the agent's update events when a rollout's desired state arrives, while
API probes (device list, health, rollout status) are timed. At the end every (device, seq) sent must be
stored exactly once (read from the database). See ``scripts/fleetsim/`` for the parts.

    python scripts/bench_fleet.py --quick                        # 100 devices, 30 s, embedded setup
    python scripts/bench_fleet.py --setup pg-mosquitto --devices 1000 --duration 60
    python scripts/bench_fleet.py --setup external --url http://127.0.0.1:8480 --token ADMIN --db postgresql://...

Setups: ``embedded`` (SQLite + embedded broker, the defaults), ``pg-managed`` (a database of its own on
127.0.0.1:5432, ``--broker mosquitto`` and one ingest worker process), ``pg-mosquitto`` (a database of its own on
127.0.0.1:5432 + a Mosquitto started here), ``external`` (a fleet you run: nothing started, nothing
dropped). Loopback only; bounded by ``--duration`` plus the connect, rollout and drain timeouts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent"), str(ROOT / "scripts")]
os.environ.setdefault("EDGEML_HOME", tempfile.mkdtemp(prefix="edgeml-bench-fleet-home-"))

from fleetsim import check  # noqa: E402
from fleetsim.conductor import SimConfig, SimResult, simulate  # noqa: E402
from fleetsim.setups import Fleet, embedded, pg_managed, pg_mosquitto  # noqa: E402
from fleetsim.worker import raise_fd_limit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", choices=["embedded", "pg-mosquitto", "pg-managed", "external"], default="embedded")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of steady telemetry")
    p.add_argument("--telemetry-s", type=float, default=10.0)
    p.add_argument("--heartbeat-s", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 2)),
                   help="simulator processes (each an asyncio loop with its share of the devices)")
    p.add_argument("--no-rollout", action="store_true")
    p.add_argument("--quick", action="store_true", help="100 devices, 30 s")
    p.add_argument("--url", help="external: the fleet's URL")
    p.add_argument("--token", help="external: an admin API token")
    p.add_argument("--db", help="external: the fleet's database URL (read for the exactly-once check)")
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="external: server/ingest process ids whose CPU to count")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds to wait for ingest to store what the devices sent, while it still progresses")
    p.add_argument("--work-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.devices, args.duration = 100, 30.0
    if args.setup == "external" and not (args.url and args.token and args.db):
        p.error("--setup external needs --url, --token and --db")
    return args


@contextlib.contextmanager
def fleet_for(args: argparse.Namespace, work: Path) -> Iterator[Fleet]:
    if args.setup == "embedded":
        with embedded(work) as fleet:
            yield fleet
    elif args.setup == "pg-mosquitto":
        with pg_mosquitto(work) as fleet:
            yield fleet
    elif args.setup == "pg-managed":
        with pg_managed(work) as fleet:
            yield fleet
    else:
        yield Fleet(args.url, args.token, args.db, "external", server_pids=args.server_pid)


def _ms(values: list[float], q: float) -> str:
    v = check.percentile(values, q)
    return "-" if math.isnan(v) else f"{v * 1000:.0f} ms"


def table(r: SimResult) -> list[tuple[str, str]]:
    c, once = r.config, r.once
    stored_total = once.stored + len(once.doubled)
    rows = [
        ("setup", r.setup), ("devices (enrolled / asked)", f"{len(r.enrolment.devices)} / {c.devices}"),
        ("enrolment time", f"{r.enrolment.seconds:.1f} s"),
        ("enrolment failures", f"{r.enrolment.failures} {r.enrolment.errors or ''}".strip()),
        ("orphans: tokens used without device", str(r.tokens_without_device)),
        ("orphans: devices without broker login", str(r.no_broker_login)),
        ("connected (time to connect all)", f"{r.connected} ({r.connect_s:.1f} s)"),
        ("reconnects during the run", str(r.reconnects)),
        ("messages sent / unacked by broker", f"{once.sent} / {r.unacked}"),
        ("stored", str(stored_total)),
        ("ingest drain after the devices stopped", f"{r.drain} after {r.drain_s:.0f} s"),
        ("lost" if r.drain != "backlog" else "not stored yet (ingest backlog at the deadline)", str(len(once.lost))),
        ("doubled", str(len(once.doubled))),
        ("ingest lag p50 / p99 / max", f"{_ms(r.lags_s, 50)} / {_ms(r.lags_s, 99)} / {_ms(r.lags_s, 100)}"),
    ]
    for name, values in sorted(r.probes.items()):
        fails = r.probe_failures.get(name, 0)
        rows.append((f"{name} p50 / p99 (n{', failed ' + str(fails) if fails else ''})",
                     f"{_ms(values, 50)} / {_ms(values, 99)} ({len(values)})"))
    rows += [
        ("rollout: desired delivered / targets", f"{r.desired_delivered} / {r.rollout_targets}"),
        ("rollout: fan-out time (create -> last delivered)", "-" if r.fanout_s is None else f"{r.fanout_s:.1f} s"),
        ("rollout: state at the end", r.rollout_final),
        ("server / broker resident memory", f"{r.probed.server_rss_mb:.0f} MB / {r.probed.broker_rss_mb:.0f} MB"),
    ]
    for label, w in (("no API calls", r.quiet), ("API probes running", r.probed)):
        rows.append((f"server CPU per stored message, {label}",
                     f"{w.per_message_us(w.server_s):.0f} us ({w.stored} msgs, {w.server_s:.1f} CPU-s)"))
        if fleet_has_broker_process(r):
            rows.append((f"broker CPU per stored message, {label}", f"{w.per_message_us(w.broker_s):.0f} us"))
    return rows


def fleet_has_broker_process(r: SimResult) -> bool:
    return r.setup != "embedded"   # the embedded broker's CPU is inside the server's


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  result")
    print("-" * (width + 40))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()   # the embedded broker runs in the server process, which inherits this limit
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edgeml-bench-fleet-"))
    cfg = SimConfig(devices=args.devices, duration_s=args.duration, telemetry_s=args.telemetry_s,
                    heartbeat_s=args.heartbeat_s, workers=args.workers, rollout=not args.no_rollout,
                    drain_timeout_s=args.drain_timeout,
                    group=f"bench-{os.getpid()}")
    with fleet_for(args, work) as fleet:
        result = simulate(fleet, cfg, work / "sim")
    print_table(table(result))
    print(f"(work dir: {work})")
    return 1 if result.once.lost or result.once.doubled else 0   # a backlog counts: the goal is to keep up


if __name__ == "__main__":
    sys.exit(main())
