"""Did the fleet store every message the devices sent exactly once? Read straight from the database.

The schema read here is ``edgeml/fleet/store/telemetry_models.py`` (``device_messages``: one row per
(device, seq) the ingest stored, ``ts`` = the device's clock, ``received_at`` = the server's) and
``edgeml/fleet/store/models.py`` (``devices``, ``enrollment_tokens``). Each query is one small function
so a change of schema is one edit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class OnceReport:
    sent: int = 0
    stored: int = 0
    lost: list[tuple[str, int]] = field(default_factory=list)      # sent, never stored
    doubled: list[tuple[str, int]] = field(default_factory=list)   # stored more than once
    unexpected: list[tuple[str, int]] = field(default_factory=list)  # stored, never sent (a bug somewhere)


def exactly_once(sent: Mapping[str, int], stored: Iterable[tuple[str, int, int]]) -> OnceReport:
    """``sent``: device -> last sequence number (it sent 1..n); ``stored``: (device, seq, rows) from the
    store. Every sent (device, seq) must appear in exactly one row."""
    report = OnceReport(sent=sum(sent.values()))
    seen: dict[tuple[str, int], int] = {}
    for device, seq, rows in stored:
        seen[(device, int(seq))] = seen.get((device, int(seq)), 0) + int(rows)
    for device, last in sent.items():
        for seq in range(1, last + 1):
            rows = seen.pop((device, seq), 0)
            report.stored += min(rows, 1)
            if rows == 0:
                report.lost.append((device, seq))
            elif rows > 1:
                report.doubled.append((device, seq))
    report.unexpected = sorted(k for k in seen if k[0] in sent)
    return report


def engine(db_url: str) -> Any:
    from sqlalchemy import create_engine

    url = db_url.replace("postgresql://", "postgresql+psycopg://", 1) if db_url.startswith("postgresql://") else db_url
    return create_engine(url)


def stored_counts(eng: Any, group: str) -> list[tuple[str, int, int]]:
    """(device, seq, rows) of every message stored for the devices of ``group``."""
    from sqlalchemy import text

    query = text("SELECT m.device_id, m.seq, COUNT(*) FROM device_messages m JOIN devices d ON d.id = m.device_id "
                 "WHERE d.group_name = :g GROUP BY m.device_id, m.seq")
    with eng.connect() as conn:
        return [(str(d), int(s), int(n)) for d, s, n in conn.execute(query, {"g": group})]


def stored_total(eng: Any, group: str) -> int:
    from sqlalchemy import text

    query = text("SELECT COUNT(*) FROM device_messages m JOIN devices d ON d.id = m.device_id WHERE d.group_name = :g")
    with eng.connect() as conn:
        return int(conn.execute(query, {"g": group}).scalar_one())


def ingest_lags_s(eng: Any, group: str) -> list[float]:
    """received_at - ts of every stored message (same clock: simulator and server share the machine)."""
    from sqlalchemy import text

    query = text("SELECT m.ts, m.received_at FROM device_messages m JOIN devices d ON d.id = m.device_id "
                 "WHERE d.group_name = :g")
    with eng.connect() as conn:
        return [(_utc(r) - _utc(t)).total_seconds() for t, r in conn.execute(query, {"g": group})]


def used_tokens_without_device(eng: Any, group: str) -> int:
    """Enrolment tokens spent on a device that the database does not hold (an enrolment half done)."""
    from sqlalchemy import text

    query = text("SELECT COUNT(*) FROM enrollment_tokens t LEFT JOIN devices d ON d.id = t.device_id "
                 "WHERE t.group_name = :g AND t.used_at IS NOT NULL AND d.id IS NULL")
    with eng.connect() as conn:
        return int(conn.execute(query, {"g": group}).scalar_one())


def devices_in_group(eng: Any, group: str) -> set[str]:
    from sqlalchemy import text

    with eng.connect() as conn:
        return {str(r[0]) for r in conn.execute(text("SELECT id FROM devices WHERE group_name = :g"), {"g": group})}


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
