"""Telemetry topics and the message envelope (schema 1), shared by the agent and the fleet.

Topics (``{d}`` = device id), see DESIGN.md:

- ``edgeml/v1/{d}/status``    retained, ``{"state": "online"|"offline", ...}``; the last-will says offline
- ``edgeml/v1/{d}/telemetry`` QoS 1, envelopes of kind ``telemetry`` and ``heartbeat``
- ``edgeml/v1/{d}/events``    QoS 1, envelopes of kind ``event``
- ``edgeml/v1/{d}/desired``   retained, written by the fleet only

Every envelope carries the device's own sequence number ``seq`` (1, 2, 3, … with no gaps, assigned
when the message is written to the agent's spool), so the fleet stores each exactly once whatever
the network or the agent does: ``{"schema": 1, "device": d, "seq": n, "ts": unix seconds,
"kind": ..., "body": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any

from edgeml.protocol import ROOT, device_prefix

SCHEMA = 1
KINDS = ("telemetry", "heartbeat", "event")


def status_topic(device_id: str) -> str:
    return f"{device_prefix(device_id)}/status"


def topic_for(device_id: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown telemetry kind {kind!r}")
    return f"{device_prefix(device_id)}/{'events' if kind == 'event' else 'telemetry'}"


def envelope(device_id: str, seq: int, ts: float, kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps(
        {"schema": SCHEMA, "device": device_id, "seq": seq, "ts": round(ts, 3), "kind": kind, "body": body},
        separators=(",", ":"), default=_jsonable,
    ).encode()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def device_from_topic(topic: str) -> tuple[str, str] | None:
    """(device id, leaf) for ``edgeml/v1/<id>/<leaf>``, else None."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != ROOT or not parts[2]:
        return None
    return parts[2], parts[3]
