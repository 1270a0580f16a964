"""``GET /v1/devices`` in pages: keyset cursor, page size limits, field selection, filters across pages —
on SQLite and PostgreSQL — and ``/v1/health`` answered from the roll-ups without reading raw telemetry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import event

from edgeml.fleet.api.pages import encode_cursor
from edgeml.fleet.store.models import Device
from edgeml.fleet.telemetry_store import Envelope, store_messages
from tests.fleet.conftest import Fleet

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _devices(fleet: Fleet, n: int) -> list[str]:
    # two devices share each enrolment time: the cursor must order by (enrolled_at, id), not time alone
    ids = [f"dev-{i:03d}" for i in range(n)]
    with fleet.server.store.session() as s:
        s.add_all(Device(id=d, name=d, tags=["even"] if i % 2 == 0 else [], hardware={}, installed={},
                         enrolled_at=T0 + timedelta(seconds=i // 2), last_seen=datetime.now(UTC),
                         mqtt_password_hash="x") for i, d in enumerate(ids))
    return ids


def _all_pages(fleet: Fleet, **params: object) -> tuple[list[dict], int]:
    items: list[dict] = []
    pages, cursor = 0, None
    while True:
        r = fleet.call("GET", "/v1/devices", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages


def test_pages_hold_every_device_once_in_order(fleet: Fleet) -> None:
    ids = _devices(fleet, 11)
    items, pages = _all_pages(fleet, limit=3)
    assert [d["id"] for d in items] == ids
    assert pages == 4
    # a filter that leaves pages short still walks every device once
    evens, _ = _all_pages(fleet, limit=2, tag="even")
    assert [d["id"] for d in evens] == ids[::2]
    # the old form (no paging parameters) still answers the whole list
    assert [d["id"] for d in fleet.call("GET", "/v1/devices").json()] == ids


def test_fields_select_what_each_item_carries_and_bad_ones_are_refused(fleet: Fleet) -> None:
    _devices(fleet, 2)
    page = fleet.call("GET", "/v1/devices", params={"fields": "id,online"}).json()
    assert page["items"] == [{"id": "dev-000", "online": True}, {"id": "dev-001", "online": True}]
    assert page["next_cursor"] is None
    # and bad paging parameters are refused with what to do
    r = fleet.call("GET", "/v1/devices", params={"fields": "id,password"})
    assert r.status_code == 400 and "password" in r.json()["detail"] and "online" in r.json()["detail"]
    r = fleet.call("GET", "/v1/devices", params={"cursor": "not-a-cursor"})
    assert r.status_code == 400 and "next_cursor" in r.json()["detail"]
    forged = encode_cursor("yesterday", "dev-000")
    assert fleet.call("GET", "/v1/devices", params={"cursor": forged}).status_code == 400
    assert fleet.call("GET", "/v1/devices", params={"limit": 1001}).status_code == 422


def test_health_reads_roll_ups_not_raw_telemetry(fleet: Fleet) -> None:
    # given telemetry from two devices on one version
    store = fleet.server.store
    now = datetime.now(UTC)
    body = {"window_s": 10.0, "models": [{"model": "m", "version": "1", "requests": 40, "errors": {"x": 4},
                                          "latency_ms": {"buckets": [0, 0, 0, 40] + [0] * 17, "sum": 80.0}}]}
    with store.session() as s:
        store_messages(s, [Envelope("dev-a", 1, now, "telemetry", body), Envelope("dev-b", 1, now, "telemetry", body),
                           Envelope("dev-b", 2, now - timedelta(hours=2), "telemetry", body)])
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2].lower())  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        # when the API is asked for the fleet's health
        r = fleet.call("GET", "/v1/health", params={"minutes": 10})
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    # then the figures are right and no raw telemetry table was read
    assert r.status_code == 200, r.text
    [h] = r.json()
    assert (h["devices"], h["requests"], h["errors"], h["p95_ms"]) == (2, 80, 8, 2.0)
    raw = [q for q in statements if "model_windows" in q or "device_messages" in q or "drift_scores" in q]
    assert statements and raw == []
