"""The ``[telemetry]`` table of the agent config, parsed beside the component that uses it.

```toml
[telemetry]
enabled = true                 # default: on when the device is enrolled (credentials.json exists)
broker = "mqtts://fleet.example:8883"   # default: from credentials.json
device_id = "..."              # default: from credentials.json
username = "..."               # default: from credentials.json
password = "..."               # default: from credentials.json
ca_file = "/etc/edgeml/ca.pem" # CA for mqtts:// (system CAs when absent)
interval_s = 10                # one telemetry message per interval
heartbeat_s = 30
spool_max_messages = 100000    # bound of the on-disk spool; oldest dropped first, counted, reported
stats_budget = 0.002           # share of inference time the input/output summaries may cost
stats_min_samples = 32         # drift floor: summaries per model version and window, whatever the request rate
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeml.errors import ConfigError
from edgeml.tomlsection import TomlSection


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool | None = None
    broker: str | None = None
    device_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    interval_s: float = 10.0
    heartbeat_s: float = 30.0
    spool_max_messages: int = 100_000
    stats_budget: float = 0.002
    stats_min_samples: int = 32


def parse_telemetry(s: TomlSection[ConfigError]) -> TelemetryConfig:
    s.only({"enabled", "broker", "device_id", "username", "password", "ca_file", "interval_s", "heartbeat_s",
            "spool_max_messages", "stats_budget", "stats_min_samples"})
    broker = s.get("broker", str, None)
    if broker is not None and not broker.startswith(("mqtt://", "mqtts://")):
        raise s.fail("broker", f"must look like mqtt://host:port or mqtts://host:port, not {broker!r}")
    ca = s.get("ca_file", str, None)
    return TelemetryConfig(
        enabled=s.get("enabled", bool, None),
        broker=broker,
        device_id=s.get("device_id", str, None),
        username=s.get("username", str, None),
        password=s.get("password", str, None),
        ca_file=Path(ca).expanduser() if ca else None,
        interval_s=s.number("interval_s", 10.0, minimum=0.01),
        heartbeat_s=s.number("heartbeat_s", 30.0, minimum=0.01),
        spool_max_messages=s.integer("spool_max_messages", 100_000, minimum=10),
        stats_budget=s.number("stats_budget", 0.002, minimum=0.0, maximum=1.0),
        stats_min_samples=s.integer("stats_min_samples", 32, minimum=0),
    )
