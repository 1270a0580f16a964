"""Concurrent enrolment benchmark: N devices enrol at once against a real ``edgeml-fleet serve``.

Goal (issue 16): 1,000 concurrent enrolments with 0 failures and 0 orphans. An orphan is a used token
without a device, a device without a used token, or a device in the store that cannot log in to the
broker with the password it was given (each is checked with a real MQTT login afterwards).

    python scripts/bench_enrol.py [--devices 1000] [--workers 64] [--broker mosquitto|embedded]
                                  [--db postgresql://…] [--quick]

``--broker mosquitto`` (default) is the managed Mosquitto with its dynamic-security plugin; ``--db``
takes a PostgreSQL URL of an empty database (default: SQLite in a temporary directory).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from edgeml.fleet.bootstrap import create_first_admin  # noqa: E402
from edgeml.fleet.store import sqlite_url  # noqa: E402
from tests.fleet.server_process import fleet_server  # noqa: E402
from tests.support.enrol_load import EnrolmentAudit, EnrolmentRun, audit_enrolments, enrol_concurrently  # noqa: E402


def run(devices: int, workers: int, broker: str, db: str | None) -> tuple[EnrolmentRun, EnrolmentAudit]:
    with tempfile.TemporaryDirectory(prefix="bench-enrol-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        db_url = db or sqlite_url(data / "fleet.db")
        admin = create_first_admin(db_url)
        extra = ["--broker", "mosquitto"] if broker == "mosquitto" else []
        with fleet_server(data, db=db, extra_args=extra) as server:
            result = enrol_concurrently(server.url, admin, devices, workers=workers)
            audit = audit_enrolments(db_url, result, ("127.0.0.1", result.broker_port))
    return result, audit


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [0.0])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=64, help="enrolments in flight at once")
    parser.add_argument("--broker", choices=["mosquitto", "embedded"], default="mosquitto")
    parser.add_argument("--db", default="postgres",
                        help="'postgres' (a temporary database on 127.0.0.1:5432, the default), 'sqlite', or "
                             "the postgresql://… URL of an empty database")
    parser.add_argument("--quick", action="store_true", help="200 devices")
    args = parser.parse_args()
    if args.quick:
        args.devices = 200
    if args.db == "postgres":
        from tests.support.postgres import temporary_database

        with temporary_database("edgeml_bench") as url:
            result, audit = run(args.devices, args.workers, args.broker, url)
    else:
        result, audit = run(args.devices, args.workers, args.broker, None if args.db == "sqlite" else args.db)
    rows = [
        ("setup", f"{args.broker} + {'SQLite' if args.db == 'sqlite' else 'PostgreSQL'}"),
        ("enrolments requested", result.requested), ("in flight at once", args.workers),
        ("succeeded", len(result.enrolled)), ("failed", len(result.failures)),
        ("503 answers retried", result.retried), ("devices in store", audit.devices_in_store),
        ("used tokens", audit.used_tokens), ("used tokens without device", len(audit.tokens_without_device)),
        ("devices without used token", len(audit.devices_without_token)),
        ("devices that cannot log in", len(audit.cannot_log_in)),
        ("enrolments/s", f"{len(result.enrolled) / max(result.seconds, 1e-9):.0f}"),
        ("latency p50 (ms)", f"{percentile(result.latencies_s, 50) * 1000:.0f}"),
        ("latency p99 (ms)", f"{percentile(result.latencies_s, 99) * 1000:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")
    for failure in result.failures[:5]:
        print("failure:", failure)
    sys.exit(1 if result.failures or audit.orphans else 0)


if __name__ == "__main__":
    main()
