"""The telemetry message envelope (schema 1), shared by the agent and the fleet (the topics it travels
on are in :mod:`edgeml.protocol`).

Every envelope carries the device's own sequence number ``seq`` (1, 2, 3, … with no gaps, assigned
when the message is written to the agent's spool), so the fleet stores each exactly once whatever
the network or the agent does: ``{"schema": 1, "device": d, "seq": n, "ts": unix seconds,
"kind": ..., "body": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA = 1


def envelope(device_id: str, seq: int, ts: float, kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps(
        {"schema": SCHEMA, "device": device_id, "seq": seq, "ts": round(ts, 3), "kind": kind, "body": body},
        separators=(",", ":"), default=_jsonable,
    ).encode()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
