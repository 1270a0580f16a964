"""The ``[updates]`` table of the agent config, parsed beside the component that uses it.

```toml
[updates]
enabled = true              # default: on when the device is enrolled
poll_interval_s = 30        # HTTP polling of the fleet's desired state (0 = MQTT only)
targets = ["x86-cpu"]       # bundle targets this device accepts (default: any)
keep_versions = 3
probation_s = 30
max_error_rate = 0.05
max_latency_regression = 1.0
min_shadow_agreement = 0.0
shadow_fraction = 0.2
min_requests = 20
min_download_speed = 1024   # bytes/s floor; slower downloads are cut and resumed
download_attempts = 5
download_retry_s = 1.0      # first pause between attempts (doubles, at most 30 s)
deltas = true               # keep the installed bundle file and fetch binary deltas against it
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeml.errors import ConfigError
from edgeml.tomlsection import TomlSection


@dataclass(frozen=True)
class UpdateSettings:
    keep_versions: int = 3
    probation_s: float = 30.0
    max_error_rate: float = 0.05
    max_latency_regression: float = 1.0        # new p50 may be at most (1 + this) × the old p50
    min_shadow_agreement: float = 0.0          # 0 = shadowing off unless the desired state asks for it
    shadow_fraction: float = 0.2
    min_requests: int = 20                     # fewer live requests than this: judge on smoke test alone
    download_attempts: int = 5
    download_retry_s: float = 1.0              # first retry pause; doubles up to 30 s
    min_download_speed: float = 1024.0
    target_ids: tuple[str, ...] = ()           # bundles for other targets are refused (empty = any)
    deltas: bool = True                        # keep the installed bundle; fetch deltas against it


@dataclass(frozen=True)
class UpdatesConfig:
    enabled: bool | None = None
    poll_interval_s: float = 30.0
    targets: tuple[str, ...] = ()
    settings: UpdateSettings = field(default_factory=UpdateSettings)


def parse_updates(s: TomlSection[ConfigError]) -> UpdatesConfig:
    s.only({"enabled", "poll_interval_s", "targets", "keep_versions", "probation_s", "max_error_rate",
            "max_latency_regression", "min_shadow_agreement", "shadow_fraction", "min_requests",
            "min_download_speed", "download_attempts", "download_retry_s", "deltas"})
    targets = s.strings("targets", what="a target id")
    return UpdatesConfig(
        enabled=s.get("enabled", bool, None),
        poll_interval_s=s.number("poll_interval_s", 30.0, minimum=0),
        targets=targets,
        settings=UpdateSettings(
            keep_versions=s.integer("keep_versions", 3, minimum=2),
            probation_s=s.number("probation_s", 30.0, minimum=0),
            max_error_rate=s.number("max_error_rate", 0.05, minimum=0, maximum=1),
            max_latency_regression=s.number("max_latency_regression", 1.0, minimum=0),
            min_shadow_agreement=s.number("min_shadow_agreement", 0.0, minimum=0, maximum=1),
            shadow_fraction=s.number("shadow_fraction", 0.2, minimum=0, maximum=1),
            min_requests=s.integer("min_requests", 20, minimum=1),
            min_download_speed=s.number("min_download_speed", 1024.0, minimum=0),
            download_attempts=s.integer("download_attempts", 5, minimum=1),
            download_retry_s=s.number("download_retry_s", 1.0, minimum=0),
            target_ids=targets,
            deltas=s.get("deltas", bool, True),
        ),
    )
