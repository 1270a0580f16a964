"""The update's persisted record: written atomically (write, fsync, rename, fsync dir) before every
side effect, so after a crash the agent knows exactly which state to resume and with what."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UpdateRecord:
    state: str = "idle"
    desired: str | None = None              # the signed desired-state wire document being applied
    model: str | None = None
    target_version: str | None = None
    previous_version: str | None = None
    bundle_sha256: str | None = None
    entered_at: float = 0.0
    restarts: int = 0                       # restarts of the agent while in `state` (boot-loop guard)
    reason: str | None = None               # why the last update failed or was rolled back
    probation_started: float | None = None
    baseline: dict[str, Any] = field(default_factory=dict)   # previous version's health before the switch
    last_serial: int = -1                   # newest desired-state serial accepted (anti-replay)
    committed: dict[str, str] = field(default_factory=dict)  # model -> version committed last
    refused: dict[str, str] = field(default_factory=dict)    # "model@version" -> why (not retried)
    history: list[list[Any]] = field(default_factory=list)   # [ts, from, event, to], newest last


class RecordFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> UpdateRecord:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return UpdateRecord()
        except (OSError, json.JSONDecodeError):
            # Only a half-written temp file can be corrupt (the rename is atomic); keep the evidence.
            self.path.rename(self.path.with_suffix(".corrupt"))
            return UpdateRecord()
        known = UpdateRecord.__dataclass_fields__
        return UpdateRecord(**{k: v for k, v in data.items() if k in known})

    def save(self, record: UpdateRecord) -> None:
        record.history = record.history[-50:]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(record), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def now() -> float:
    return time.time()
