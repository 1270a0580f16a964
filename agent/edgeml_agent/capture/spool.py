"""The capture spool: captured samples on disk until the fleet has them.

Each sample is one ``.npz`` file (``in/<input>``, ``out/<output>`` arrays and ``__meta__``, a JSON text
array holding id, model, version, trigger, figures and time), written to ``tmp/`` and renamed into
``samples/``, so a crash leaves either a whole file or none. An index in SQLite (WAL) lists them in
capture order for the uploader. A file renamed but not yet indexed (a crash between the two) is indexed
from its own ``__meta__`` when the spool opens: nothing written is lost.

The on-disk quota is kept by dropping the oldest samples first; every drop is counted durably
(``dropped``) and reported by the component. Only the writer thread adds; only the uploader removes.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import time
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeml.arrays import Array
from edgeml.jsontypes import JSON

META_KEY = "__meta__"


@dataclass(frozen=True)
class SpooledCapture:
    id: str
    model: str
    version: str
    trigger: str
    size: int
    path: Path


def new_capture_id() -> str:
    """Sortable by time (hex nanoseconds) and unique (random tail): the fleet keys a sample by (device, id)."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:8]}"


def encode_sample(meta: Mapping[str, JSON], inputs: Mapping[str, Array] | None,
                  outputs: Mapping[str, Array] | None) -> bytes:
    """The ``.npz`` bytes of one sample (no pickles: the fleet reads it with ``allow_pickle=False``)."""
    arrays: dict[str, Array] = {f"in/{k}": np.asarray(v) for k, v in (inputs or {}).items()}
    arrays.update({f"out/{k}": np.asarray(v) for k, v in (outputs or {}).items()})
    arrays[META_KEY] = np.array(json.dumps(dict(meta), sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as its allow_pickle flag
    return buffer.getvalue()


def read_meta(data: bytes | Path) -> dict[str, JSON]:
    """The ``__meta__`` of a sample file (raises ValueError/KeyError/zipfile errors when it has none)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(source, allow_pickle=False) as npz:
        meta = json.loads(str(npz[META_KEY][()]))
    if not isinstance(meta, dict):
        raise ValueError("the sample's __meta__ is not a JSON object")
    return meta


def _number(value: JSON) -> float:
    return float(value) if isinstance(value, int | float) else time.time()


class CaptureSpool:
    def __init__(self, root: Path, quota_bytes: int = 200_000_000) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.samples_dir = self.root / "samples"
        self.tmp_dir = self.root / "tmp"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()   # writer and uploader threads share one connection
        self.db = sqlite3.connect(str(self.root / "index.db"), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS captures (id TEXT PRIMARY KEY, model TEXT, version TEXT, "
                        "trigger TEXT, size INTEGER, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
        self._recover()

    def _recover(self) -> None:
        for leftover in self.tmp_dir.iterdir():   # never renamed: the sample was never captured
            leftover.unlink(missing_ok=True)
        known = {row[0] for row in self.db.execute("SELECT id FROM captures")}
        for path in sorted(self.samples_dir.glob("*.npz")):
            if path.stem in known:
                continue
            try:
                meta = read_meta(path)
                self._index(str(meta["id"]), meta, path.stat().st_size)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                path.unlink(missing_ok=True)   # not a whole sample (cannot happen after a rename): drop it
        for (orphan,) in list(self.db.execute("SELECT id FROM captures")):
            if not self._path(orphan).exists():
                self.db.execute("DELETE FROM captures WHERE id = ?", (orphan,))

    def _path(self, capture_id: str) -> Path:
        return self.samples_dir / f"{capture_id}.npz"

    def _index(self, capture_id: str, meta: Mapping[str, JSON], size: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO captures VALUES (?, ?, ?, ?, ?, ?)",
                        (capture_id, str(meta.get("model", "")), str(meta.get("version", "")),
                         str(meta.get("trigger", "")), size, _number(meta.get("ts"))))

    def add(self, capture_id: str, meta: Mapping[str, JSON], data: bytes) -> list[str]:
        """Store one sample (temp file, fsync, rename, index); returns the ids the quota dropped for it."""
        tmp = self.tmp_dir / f"{capture_id}.npz"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(capture_id))
        with self._lock:
            self._index(capture_id, meta, len(data))
            return self._enforce_quota()

    def _enforce_quota(self) -> list[str]:
        total = int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM captures").fetchone()[0])
        dropped: list[str] = []
        if total <= self.quota_bytes:
            return dropped
        for capture_id, size in self.db.execute("SELECT id, size FROM captures ORDER BY created, id").fetchall():
            if total <= self.quota_bytes:
                break
            self._path(capture_id).unlink(missing_ok=True)
            self.db.execute("DELETE FROM captures WHERE id = ?", (capture_id,))
            total -= int(size)
            dropped.append(capture_id)
        self.db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (len(dropped),))
        return dropped

    def pending(self, limit: int = 16) -> list[SpooledCapture]:
        with self._lock:
            rows = self.db.execute("SELECT id, model, version, trigger, size FROM captures ORDER BY created, id "
                                   "LIMIT ?", (limit,)).fetchall()
        return [SpooledCapture(str(i), str(m), str(v), str(t), int(s), self._path(str(i))) for i, m, v, t, s in rows]

    def remove(self, capture_id: str) -> None:
        """Forget a sample the fleet has stored (index first: a crash then leaves a file that is re-sent
        and answered "already stored", never an index entry without its file)."""
        with self._lock:
            self.db.execute("DELETE FROM captures WHERE id = ?", (capture_id,))
        self._path(capture_id).unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM captures").fetchone()[0])

    @property
    def bytes(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM captures").fetchone()[0])

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()
