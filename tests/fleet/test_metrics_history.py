"""``/metrics``' per-version figures and ``/v1/health/history`` over what ingest stored, read from the
roll-ups only (the raw telemetry tables are never read)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from tests.fleet.conftest import Fleet
from tests.fleet.seeded_fleet import seed, utcnow

RAW_TABLES = ("model_windows", "device_messages", "drift_scores")


@contextmanager
def recorded_sql(fleet: Fleet) -> Iterator[list[str]]:
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2].lower())  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(fleet.server.store.engine, "before_cursor_execute", listener)
    try:
        yield statements
    finally:
        event.remove(fleet.server.store.engine, "before_cursor_execute", listener)


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_export_per_version_figures_from_roll_ups(fleet: Fleet) -> None:
    # given two devices' telemetry on cls@1 and cls@2, a drift capture and a running rollout
    seed(fleet, utcnow())
    # when Prometheus scrapes
    with recorded_sql(fleet) as statements:
        r = fleet.call("GET", "/metrics")
    assert r.status_code == 200, r.text
    m = _samples(r.text)
    v1, v2 = (("model", "cls"), ("version", "1")), (("model", "cls"), ("version", "2"))
    # then counters are lifetime totals per version, in Prometheus' _total convention
    assert m["edgeml_fleet_model_requests_total"] == {v1: 150, v2: 20}
    assert m["edgeml_fleet_model_errors_total"] == {v1: 5, v2: 0}
    # and latency is in seconds, over the last 5 minutes only (the 4 ms window 10 minutes ago is out)
    lat = m["edgeml_fleet_model_latency_seconds"]
    assert lat[(("model", "cls"), ("quantile", "0.5"), ("version", "1"))] == 0.05
    assert lat[(("model", "cls"), ("quantile", "0.99"), ("version", "2"))] == 0.001
    # and devices running each version by online state (both reported just now: online)
    assert m["edgeml_fleet_model_devices"] == {
        (("model", "cls"), ("state", "online"), ("version", "1")): 1,
        (("model", "cls"), ("state", "online"), ("version", "2")): 1}
    assert m["edgeml_fleet_captures"] == {(("model", "cls"), ("trigger", "drift"), ("version", "2")): 1}
    rollout = (("model", "cls"), ("rollout", "r-1"), ("version", "2"))
    assert m["edgeml_fleet_rollout_state"] == {
        (("model", "cls"), ("rollout", "r-1"), ("state", "running"), ("version", "2")): 1}
    assert m["edgeml_fleet_rollout_wave"] == {rollout: 1}
    assert utcnow().timestamp() - m["edgeml_fleet_rollout_last_progress_timestamp_seconds"][rollout] > 3000
    # and the names tests and dashboards already use are still there
    assert m["edgeml_fleet_model_error_rate"][v1] == 0.1 and m["edgeml_fleet_model_drift_psi"] == {v2: 0.4}
    assert [q for q in statements if any(t in q for t in RAW_TABLES)] == []


def test_history_has_null_for_minutes_without_data(fleet: Fleet) -> None:
    # given cls@1 with traffic 10 minutes ago and now, nothing in between
    seed(fleet, utcnow())
    # when the dashboard asks for the last 15 minutes of cls, minute by minute
    with recorded_sql(fleet) as statements:
        r = fleet.call("GET", "/v1/health/history", params={"model": "cls", "minutes": 15})
    assert r.status_code == 200, r.text
    series = {s["version"]: s for s in r.json()}
    assert set(series) == {"1", "2"} and (series["1"]["drift"], series["2"]["drift"]) == (None, 0.4)
    assert series["1"]["drift_hourly"] == [] and [d["drift"] for d in series["2"]["drift_hourly"]] == [0.4]
    points = series["1"]["points"]
    assert len(points) == 15 and series["1"]["step_s"] == 60
    # then the two minutes with data have their figures, and every other minute is null (a gap), never 0
    with_data = [p for p in points if p["requests"] is not None]
    assert [(p["requests"], p["errors"], p["p50_ms"]) for p in with_data] == [(100, 0, 5.0), (50, 5, 50.0)]
    assert with_data[1]["error_rate"] == 0.1 and points[-1] == with_data[1]
    empty = [p for p in points if p["requests"] is None]
    assert len(empty) == 13 and all(p["p50_ms"] is None and p["error_rate"] is None for p in empty)
    assert [q for q in statements if any(t in q for t in RAW_TABLES)] == []
    # and a coarser step adds minutes up; one version can be asked for alone
    r = fleet.call("GET", "/v1/health/history", params={"model": "cls", "version": "1", "minutes": 15,
                                                                "step": 15})
    [only] = r.json()
    assert [(p["requests"], p["errors"]) for p in only["points"]] == [(150, 5)]


def test_history_refuses_too_many_points_and_needs_a_token(sqlite_fleet: Fleet) -> None:
    r = sqlite_fleet.call("GET", "/v1/health/history", params={"model": "cls", "minutes": 7 * 1440})
    assert r.status_code == 400 and "step=7" in r.json()["detail"]
    assert sqlite_fleet.http.get("/v1/health/history", params={"model": "cls"}).status_code == 401
