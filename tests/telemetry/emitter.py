"""A device that emits a known number of telemetry events through the real spool + publisher.

    python emitter.py CONFIG.json

CONFIG: {"spool": path, "device": id, "broker": url, "username", "password", "ca_file", "total": N,
"rate": messages per second}. It resumes after a restart from the spool's last sequence number, so
across kills and restarts it emits sequence numbers 1..N exactly once, then waits until the broker has
acknowledged everything and exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from edgeml_agent.telemetry.publisher import BrokerSettings, TelemetryPublisher
from edgeml_agent.telemetry.spool import Spool


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    spool = Spool(Path(cfg["spool"]), cfg["device"])
    already = spool.last_seq
    publisher = TelemetryPublisher(
        BrokerSettings(cfg["broker"], cfg["device"], cfg.get("username"), cfg.get("password"),
                       Path(cfg["ca_file"]) if cfg.get("ca_file") else None, reconnect_max_s=0.5),
        spool,
    )
    publisher.start()
    interval = 1.0 / cfg["rate"]
    for i in range(already, cfg["total"]):
        publisher.emit("event", {"event": "test", "i": i + 1})
        time.sleep(interval)
    # wait for the spool to drain (the I/O thread numbers, sends and acknowledges)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not _pending(cfg) and _last_seq(cfg) >= cfg["total"]:
            break
    publisher.stop(flush_timeout_s=5)
    print(f"emitted up to seq {cfg['total']}", flush=True)
    return 0


def _pending(cfg: dict) -> int:  # type: ignore[type-arg]
    probe = Spool(Path(cfg["spool"]), cfg["device"])
    try:
        return len(probe)
    finally:
        probe.close()


def _last_seq(cfg: dict) -> int:  # type: ignore[type-arg]
    probe = Spool(Path(cfg["spool"]), cfg["device"])
    try:
        return probe.last_seq
    finally:
        probe.close()


if __name__ == "__main__":
    sys.exit(main())
