from __future__ import annotations

import json
from pathlib import Path

from edgeml_agent.telemetry.spool import Spool


def _payload(msg) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(msg.payload)


def test_messages_get_consecutive_sequence_numbers_that_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", "dev-1")
    assert [spool.append("event", {"i": i}) for i in range(3)] == [1, 2, 3]
    spool.close()
    spool = Spool(tmp_path / "s.db", "dev-1")
    assert spool.append("event", {"i": 3}) == 4
    pending = spool.pending()
    assert [m.seq for m in pending] == [1, 2, 3, 4]
    assert [_payload(m)["body"]["i"] for m in pending] == [0, 1, 2, 3]
    assert pending[0].topic == "edgeml/v1/dev-1/events"
    assert _payload(pending[0])["device"] == "dev-1"


def test_acknowledged_messages_leave_the_spool_and_the_rest_stay_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", "d")
    spool.append_many([("heartbeat", {}, 1.0), ("telemetry", {"models": []}, 2.0), ("event", {}, 3.0)])
    spool.ack([2])
    assert [m.seq for m in spool.pending()] == [1, 3]
    assert [m.seq for m in spool.pending(after_seq=1)] == [3]
    assert spool.pending()[0].topic == "edgeml/v1/d/telemetry"


def test_the_bound_drops_oldest_first_and_reports_each_drop_exactly_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", "d", max_messages=10)
    for i in range(15):
        spool.append("event", {"i": i})
    assert len(spool) == 10
    assert next(m.seq for m in spool.pending()) == 6
    assert spool.dropped == 5
    seq = spool.append("telemetry", {"models": []})
    reported = next(m for m in spool.pending(limit=100) if m.seq == seq)
    assert _payload(reported)["body"]["spool_dropped"] == 5
    # storing that message pushed one more out: the next telemetry message reports just that one
    seq2 = spool.append("telemetry", {"models": []})
    assert _payload(next(m for m in spool.pending(limit=100) if m.seq == seq2))["body"]["spool_dropped"] == 1
    assert spool.dropped == 7
