"""The update's persisted record: written atomically (write, fsync, rename, fsync dir) before every
side effect, so after a crash the agent knows exactly which state to resume and with what."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeml.fileio import write_atomic
from edgeml.protocol import UpdateState

# [unix time, from state, event, to state]: the wire strings, as the enums' values
HistoryEntry = list[float | str]


@dataclass
class UpdateRecord:
    state: UpdateState = UpdateState.IDLE
    desired: str | None = None              # the signed desired-state wire document being applied
    model: str | None = None
    target_version: str | None = None
    previous_version: str | None = None
    bundle_sha256: str | None = None
    entered_at: float = 0.0
    restarts: int = 0                       # restarts of the agent while in `state` (boot-loop guard)
    reason: str | None = None               # why the last update failed or was rolled back
    probation_started: float | None = None
    baseline: dict[str, float | None] = field(default_factory=dict)  # previous version's health before the switch
    last_serial: int = -1                   # newest desired-state serial accepted (anti-replay)
    committed: dict[str, str] = field(default_factory=dict)  # model -> version committed last
    refused: dict[str, str] = field(default_factory=dict)    # "model@version" -> why (not retried)
    history: list[HistoryEntry] = field(default_factory=list)  # newest last


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
        record = UpdateRecord(**{k: v for k, v in data.items() if k in known})
        record.state = UpdateState(record.state)
        return record

    def save(self, record: UpdateRecord) -> None:
        record.history = record.history[-50:]
        write_atomic(self.path, json.dumps(asdict(record), indent=1, sort_keys=True))


def now() -> float:
    return time.time()
