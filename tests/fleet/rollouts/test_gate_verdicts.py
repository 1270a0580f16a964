"""The gates' edges and the record of a verdict: a version exactly at a limit passes, a disabled gate
never judges, and the figures written to the audit log are the numbers the decision was taken on."""

from __future__ import annotations

import pytest

from edgeml.fleet.rollouts import Gates, judge
from edgeml.fleet.rollouts.gates import Coverage
from tests.fleet.rollouts.test_plan_and_gates import H


@pytest.mark.parametrize(("new", "gates"), [
    (H(errors=5), Gates(max_error_rate=0.05)),                    # 5 % of 100 with a 5 % limit
    (H(p50_ms=3.0), Gates(max_latency_regression=0.5)),           # 2.0 ms before, +50 % allowed
    (H(drift=0.25), Gates(max_drift=0.25)),
    (H(requests=10), Gates(min_requests=10)),
])
def test_a_version_exactly_at_a_limit_passes(new: H, gates: Gates) -> None:
    verdict = judge(gates, new, H())
    assert verdict.passed and verdict.enough_traffic, verdict.reasons


def test_just_over_each_limit_fails() -> None:
    assert not judge(Gates(max_error_rate=0.05), H(errors=6), H()).passed
    assert not judge(Gates(max_latency_regression=0.5), H(p50_ms=3.01), H()).passed
    assert not judge(Gates(max_drift=0.25), H(drift=0.26), H()).passed
    short = judge(Gates(min_requests=10), H(requests=9), H())
    assert not short.passed and not short.enough_traffic


def test_drift_is_judged_only_when_the_gate_is_set_and_drift_was_measured() -> None:
    assert judge(Gates(max_drift=None), H(drift=0.9), H()).passed
    assert judge(Gates(max_drift=0.1), H(drift=None), H()).passed


def test_no_latency_limit_without_a_previous_median() -> None:
    for previous in (H(p50_ms=None), H(p50_ms=0.0)):
        verdict = judge(Gates(), H(p50_ms=50.0), previous)
        assert verdict.passed and "latency_limit_ms" not in verdict.figures


def test_the_verdict_records_both_versions_the_gates_and_the_latency_limit() -> None:
    # given a new version with one error in three requests, slower than the previous one but within the limit
    gates = Gates(max_error_rate=0.5, max_latency_regression=0.5, max_drift=0.3, min_requests=3)
    new = H(devices=3, requests=3, errors=1, p50_ms=1.5, p95_ms=4.0, drift=0.125)
    previous = H(devices=5, requests=40, errors=2, p50_ms=1.23456, p95_ms=2.5, drift=None)
    # when it is judged
    verdict = judge(gates, new, previous, Coverage(installed=4, reporting=3))
    # then the audit record holds the figures as they were, rounded for reading
    assert verdict.passed
    assert verdict.figures == {
        "new": {"devices": 3, "requests": 3, "errors": 1, "error_rate": 0.3333, "p50_ms": 1.5, "p95_ms": 4.0,
                "drift": 0.125},
        "previous": {"devices": 5, "requests": 40, "errors": 2, "error_rate": 0.05, "p50_ms": 1.23456,
                     "p95_ms": 2.5, "drift": None},
        "gates": {"max_error_rate": 0.5, "max_latency_regression": 0.5, "min_shadow_agreement": None,
                  "max_drift": 0.3, "min_requests": 3, "min_reporting": 0.5},
        "reporting": {"devices": 3, "installed": 4, "needed": 2},
        "latency_limit_ms": 1.852,
    }


def test_a_first_version_has_no_previous_figures() -> None:
    assert judge(Gates(), H(), None).figures["previous"] is None


def test_every_failed_gate_is_reported_together() -> None:
    gates = Gates(max_error_rate=0.05, max_latency_regression=0.5, max_drift=0.2, min_requests=1000)
    verdict = judge(gates, H(errors=50, p50_ms=9.0, drift=0.5), H())
    assert [r.split()[0] for r in verdict.reasons] == ["only", "error", "p50", "input"]


def test_gates_stored_with_a_rollout_read_back_the_same_and_older_rows_get_the_defaults() -> None:
    gates = Gates(max_error_rate=0.01, max_latency_regression=None, min_shadow_agreement=0.9, max_drift=0.2,
                  min_requests=50)
    assert Gates.from_json(gates.to_json()) == gates
    assert Gates.from_json({"max_drift": 0.3}) == Gates(max_drift=0.3)


# -- no data is never a pass ------------------------------------------------------------------------

def test_no_telemetry_at_all_is_not_a_pass_even_without_a_traffic_minimum() -> None:
    # given gates that ask for no traffic (min_requests 0) and a window with nothing of the new version
    verdict = judge(Gates(min_requests=0), H(devices=0, requests=0, p50_ms=None, p95_ms=None), H())
    # then it neither passes nor counts as enough to judge
    assert not verdict.passed and not verdict.enough_traffic
    assert verdict.reasons == ("no telemetry of the new version arrived in the window",)


@pytest.mark.parametrize(("installed", "reporting", "share", "enough"), [
    (4, 2, 0.5, True), (4, 1, 0.5, False),        # half of four: two must report
    (1, 0, 0.0, False), (3, 1, 0.0, True),        # never fewer than one, whatever the share says
    (3, 2, 1.0, False), (3, 3, 1.0, True),        # every device
    (1000, 500, 0.5, True), (1000, 499, 0.5, False),
])
def test_enough_of_the_waves_devices_must_report(installed: int, reporting: int, share: float,
                                                  enough: bool) -> None:
    new = H(devices=reporting, requests=100 if reporting else 0)
    verdict = judge(Gates(min_reporting=share), new, H(), Coverage(installed=installed, reporting=reporting))
    assert verdict.enough_traffic is enough and verdict.passed is enough, verdict.reasons
    if not enough and reporting:
        assert f"only {reporting} of the wave's {installed} installed devices sent telemetry" in verdict.reasons[0]
