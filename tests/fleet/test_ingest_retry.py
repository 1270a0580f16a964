"""The ingest writer never drops a batch the broker acknowledged: the embedded broker hands messages over
in-process with no redelivery, so a database that is busy for longer than a few retries must delay the
batch, never lose it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from edgeml.fleet import ingest
from edgeml.fleet.ingest import IngestService
from edgeml.fleet.store import Store, sqlite_url
from edgeml.fleet.store.telemetry_models import DeviceMessage
from edgeml.fleet.telemetry_store import Envelope
from edgeml.protocol import topic_for
from edgeml.telemetry.messages import envelope


def test_a_batch_is_stored_after_the_database_refused_it_many_times(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # given a database that answers "locked" to the first 12 writes (more than any fixed retry count)
    store = Store.open(sqlite_url(tmp_path / "fleet.db"))
    refusals = {"left": 12}
    real_store_messages = ingest.store_messages

    def busy_then_fine(session: Session, batch: Sequence[Envelope], **options: Any) -> int:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_store_messages(session, batch, **options)

    monkeypatch.setattr(ingest, "store_messages", busy_then_fine)
    service = IngestService(store, "127.0.0.1", 0, "svc", "pw", shared=False, batch_size=10)
    service.start_tapped()
    try:
        # when the embedded broker hands over 25 telemetry messages
        for seq in range(1, 26):
            service.offer(topic_for("dev-1", "telemetry"),
                          envelope("dev-1", seq, time.time(), "telemetry", {"models": []}))
        deadline = time.monotonic() + 60
        while service.stats.stored < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        service.stop()
    # then every one is stored once, after the refusals were used up
    with store.session() as s:
        seqs = sorted(q for (q,) in s.query(DeviceMessage.seq).filter(DeviceMessage.device_id == "dev-1"))
    store.close()
    assert refusals["left"] == 0
    assert seqs == list(range(1, 26))
