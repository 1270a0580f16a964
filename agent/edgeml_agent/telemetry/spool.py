"""Store-and-forward spool: every telemetry message is written here (SQLite, WAL) with the next
per-device sequence number *before* it is offered to the broker, and deleted only when the broker
has acknowledged it. After a reconnect or a restart, what is left is sent again in order.

The spool has a bound (messages); when full, the oldest messages are dropped, and the number dropped
is counted durably and reported in the next telemetry message — never silent.
Only the publisher thread touches the database: producers hand messages over through a queue.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeml.jsontypes import JSON
from edgeml.protocol import topic_for
from edgeml.telemetry.messages import envelope


@dataclass(frozen=True)
class SpooledMessage:
    seq: int
    topic: str
    payload: bytes


class Spool:
    def __init__(self, path: Path, device_id: str, max_messages: int = 100_000) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.max_messages = max_messages
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('dropped', 0), ('dropped_reported', 0)")

    def _meta(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def append(self, kind: str, body: Mapping[str, JSON], ts: float | None = None) -> int:
        """Give the message the next sequence number and store it durably; returns the number."""
        return self.append_many([(kind, body, time.time() if ts is None else ts)])[-1]

    def append_many(self, messages: list[tuple[str, Mapping[str, JSON], float]]) -> list[int]:
        """Number and store several messages in one transaction (one disk sync for all of them).

        A ``telemetry`` message also carries, in the same transaction, how many messages the bound
        dropped since the last report (``spool_dropped``), so a drop is reported exactly once.
        """
        seqs = []
        with self._transaction():
            seq = self._meta("next_seq")
            for kind, body, ts in messages:
                data = dict(body)
                if kind == "telemetry":
                    dropped, reported = self._meta("dropped"), self._meta("dropped_reported")
                    data["spool_dropped"] = dropped - reported
                    self.db.execute("UPDATE meta SET value = ? WHERE key = 'dropped_reported'", (dropped,))
                self.db.execute("INSERT INTO messages VALUES (?, ?, ?)",
                                (seq, topic_for(self.device_id, kind), envelope(self.device_id, seq, ts, kind, data)))
                seqs.append(seq)
                seq += 1
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
            self._enforce_bound()
        return seqs

    def _enforce_bound(self) -> None:
        count = int(self.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        excess = count - self.max_messages
        if excess > 0:
            self.db.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?)", (excess,)
            )
            self.db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,))

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[SpooledMessage]:
        rows = self.db.execute(
            "SELECT seq, topic, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [SpooledMessage(int(s), str(t), bytes(p)) for s, t, p in rows]

    def ack(self, seqs: list[int]) -> None:
        """Forget messages the broker has acknowledged."""
        if seqs:
            with self._transaction():
                self.db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in seqs])

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    @property
    def dropped(self) -> int:
        """Messages dropped by the size bound since the spool was created."""
        return self._meta("dropped")

    @property
    def last_seq(self) -> int:
        return self._meta("next_seq") - 1

    def close(self) -> None:
        self.db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self.db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
