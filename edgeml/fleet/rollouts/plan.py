"""Which devices a rollout covers and in which wave each one gets the new version (pure functions).

Waves are cumulative percentages of the selected devices (``1,10,50,100``): wave *i* brings the total
to ``ceil(n * p_i / 100)`` devices, and every wave adds at least one device, so a canary wave of 1 %
still has a device on a fleet of 4. Waves that would add nothing (fewer devices than waves) are dropped.
Devices are ordered by enrolment time, then id: the same fleet always gives the same canaries.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgeml.errors import ConfigError


def parse_waves(text: str | Sequence[int]) -> list[int]:
    """``"1,10,50,100"`` → ``[1, 10, 50, 100]``: strictly increasing percentages ending at 100."""
    try:
        waves = [int(str(p).strip().rstrip("%")) for p in (text.split(",") if isinstance(text, str) else text)]
    except ValueError as exc:
        raise ConfigError(f"waves must be comma-separated percentages like 1,10,50,100 (got {text!r})") from exc
    if not waves or any(b <= a for a, b in itertools.pairwise(waves)) or waves[0] < 1 or waves[-1] != 100:
        raise ConfigError(f"waves must be increasing percentages between 1 and 100 ending at 100, like 1,10,50,100 "
                          f"(got {','.join(map(str, waves))})")
    return waves


def wave_sizes(n: int, percents: Sequence[int]) -> list[int]:
    """Cumulative device counts per wave for ``n`` devices; every wave adds at least one device."""
    sizes: list[int] = []
    for p in percents:
        target = max(math.ceil(n * p / 100), (sizes[-1] + 1) if sizes else 1)
        target = min(target, n)
        if not sizes or target > sizes[-1]:
            sizes.append(target)
    return sizes


def assign_waves(device_ids: Sequence[str], percents: Sequence[int]) -> dict[str, int]:
    """Device id → wave index (0-based) for devices already in rollout order."""
    out: dict[str, int] = {}
    start = 0
    for wave, end in enumerate(wave_sizes(len(device_ids), percents)):
        for device in device_ids[start:end]:
            out[device] = wave
        start = end
    return out


@dataclass(frozen=True)
class Selector:
    """Which devices: a group, a tag, or both (all must match). Empty selects every enrolled device."""

    group: str | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Selector:
        """From ``["group=cams", "tag=eu"]`` (the CLI's ``--select``, repeatable or ``/``/``,``-joined)."""
        values: dict[str, str] = {}
        for spec in (part for s in specs for part in s.replace("/", ",").split(",") if part.strip()):
            key, sep, value = spec.strip().partition("=")
            if not sep or key not in ("group", "tag") or not value:
                raise ConfigError(f"--select takes group=NAME or tag=NAME (got {spec!r})")
            if key in values:
                raise ConfigError(f"--select names {key} twice")
            values[key] = value
        return cls(**values)

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in (("group", self.group), ("tag", self.tag)) if v is not None}

    def matches(self, group: str | None, tags: Sequence[str]) -> bool:
        return (self.group is None or group == self.group) and (self.tag is None or self.tag in tags)

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.to_json().items()) or "all devices"
