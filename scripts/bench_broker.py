"""Broker stress benchmark: N devices with their own credentials connect at once and publish QoS 1.

A real ``edgeml-fleet serve`` process (SQLite, the embedded broker by default, or ``--broker mosquitto``
for the managed Mosquitto) enrols N devices through the HTTP API; then N paho clients connect in
overlapping waves, each subscribing to its own ``desired`` topic, publishing a retained status and
``--messages`` QoS 1 telemetry envelopes. Afterwards every (device, seq) the broker acknowledged must be
in the fleet's store: the table shows connects, refusals, unexpected disconnects, acknowledged, stored
and lost messages.

    python scripts/bench_broker.py [--devices 1000] [--messages 5] [--broker embedded|mosquitto] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from edgeml.fleet.bootstrap import create_first_admin  # noqa: E402
from edgeml.fleet.store import Store, sqlite_url  # noqa: E402
from edgeml.fleet.store.telemetry_models import DeviceMessage  # noqa: E402
from tests.fleet.server_process import fleet_server  # noqa: E402
from tests.support.enrol_load import enrol_concurrently  # noqa: E402
from tests.support.mqtt_swarm import SwarmDevice, SwarmResult, run_swarm  # noqa: E402


def stored_seqs(db: str, expected: int, timeout_s: float = 90) -> dict[str, set[int]]:
    store = Store.open(db, migrate=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with store.session() as s:
                rows = s.query(DeviceMessage.device_id, DeviceMessage.seq).all()
            if len(rows) >= expected or time.monotonic() > deadline:
                out: dict[str, set[int]] = {}
                for device, seq in rows:
                    out.setdefault(device, set()).add(seq)
                return out
            time.sleep(0.5)
    finally:
        store.close()


def run(devices: int, messages: int, concurrency: int, broker: str) -> tuple[SwarmResult, int, float]:
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        db = sqlite_url(data / "fleet.db")
        admin = create_first_admin(db)
        extra = ["--broker", "mosquitto"] if broker == "mosquitto" else []
        with fleet_server(data, extra_args=extra) as server:
            t0 = time.monotonic()
            try:
                enrolled = enrol_concurrently(server.url, admin, devices, workers=4)
            except Exception:
                print(server.log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            enrol_s = time.monotonic() - t0
            if enrolled.failures:
                raise SystemExit(f"{len(enrolled.failures)} enrolments failed, e.g. {enrolled.failures[0]}")
            swarm = [SwarmDevice(device, password) for device, password in enrolled.enrolled.items()]
            port = enrolled.broker_port
            result = run_swarm("127.0.0.1", port, swarm, messages=messages, concurrency=concurrency,
                               processes=max(1, len(swarm) // 100))
            stored = stored_seqs(db, result.acked_total)
        lost = sum(len(seqs - stored.get(device, set())) for device, seqs in result.acked.items())
    return result, lost, enrol_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5, help="QoS 1 telemetry messages per device")
    parser.add_argument("--concurrency", type=int, default=100, help="devices connecting in one wave")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded")
    parser.add_argument("--quick", action="store_true", help="200 devices, 3 messages each")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.messages = 200, 3
    result, lost, enrol_s = run(args.devices, args.messages, args.concurrency, args.broker)
    rows = [
        ("broker", args.broker), ("devices", result.devices), ("enrolment (s)", f"{enrol_s:.1f}"),
        ("connected", result.connected), ("refused", result.refused), ("subscribed", result.subscribed),
        ("unexpected disconnects", result.unexpected_disconnects),
        ("messages acknowledged", result.acked_total), ("expected", result.devices * args.messages),
        ("acknowledged but not stored", lost), ("swarm time (s)", f"{result.seconds:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")
    sys.exit(1 if lost or result.unexpected_disconnects or result.acked_total < result.devices * args.messages
             else 0)


if __name__ == "__main__":
    main()
