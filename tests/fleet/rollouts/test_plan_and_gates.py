"""Waves, selector, gates and CLI durations: the pure rules of a rollout."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgeml.errors import ConfigError
from edgeml.fleet.cli.rollouts import parse_duration
from edgeml.fleet.rollouts import Gates, Selector, assign_waves, judge, parse_waves, wave_sizes


@pytest.mark.parametrize(("n", "waves", "sizes"), [
    (4, [1, 10, 50, 100], [1, 2, 3, 4]),          # every wave adds at least one device
    (1000, [1, 10, 50, 100], [10, 100, 500, 1000]),
    (2, [1, 10, 50, 100], [1, 2]),                # fewer devices than waves: empty waves are dropped
    (1, [1, 10, 50, 100], [1]),
    (7, [50, 100], [4, 7]),                       # ceil: a half device is a device
])
def test_wave_sizes_are_cumulative_and_never_empty(n: int, waves: list[int], sizes: list[int]) -> None:
    assert wave_sizes(n, waves) == sizes


def test_assign_waves_follows_the_given_order() -> None:
    ids = [f"d{i}" for i in range(10)]
    waves = assign_waves(ids, [10, 50, 100])
    assert waves == {"d0": 0, **{f"d{i}": 1 for i in range(1, 5)}, **{f"d{i}": 2 for i in range(5, 10)}}


@pytest.mark.parametrize("bad", ["", "10,5,100", "1,10,50", "0,100", "a,b", "1,1,100"])
def test_bad_waves_are_refused_with_an_example(bad: str) -> None:
    with pytest.raises(ConfigError, match="1,10,50,100"):
        parse_waves(bad)


def test_parse_waves_accepts_percent_signs() -> None:
    assert parse_waves("1%,10%,100%") == [1, 10, 100]


def test_selector_parses_group_and_tag_and_matches_both() -> None:
    s = Selector.parse(["group=cams/tag=eu"])
    assert s == Selector(group="cams", tag="eu") == Selector.parse(["group=cams", "tag=eu"])
    assert s.matches("cams", ["eu", "x"]) and not s.matches("cams", ["us"]) and not s.matches("doors", ["eu"])
    assert Selector().matches(None, []) and Selector().describe() == "all devices"
    for bad in (["site=x"], ["group="], ["group=a", "group=b"], ["tag"]):
        with pytest.raises(ConfigError, match="select"):
            Selector.parse(bad)


@dataclass
class H:
    devices: int = 2
    requests: int = 100
    errors: int = 0
    p50_ms: float | None = 2.0
    p95_ms: float | None = 3.0
    drift: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def test_gates_pass_a_healthy_version_and_keep_the_numbers() -> None:
    v = judge(Gates(), H(), H())
    assert v.passed and v.enough_traffic and v.reasons == ()
    assert v.figures["new"]["requests"] == 100 and v.figures["latency_limit_ms"] == 3.0


@pytest.mark.parametrize(("new", "gates", "reason"), [
    (H(errors=10), Gates(max_error_rate=0.05), "error rate 10.0% (10/100) exceeds 5.0%"),
    (H(p50_ms=7.5), Gates(max_latency_regression=0.5), "p50 latency 7.50 ms vs 2.00 ms"),
    (H(drift=0.4), Gates(max_drift=0.2), "input drift (PSI) 0.400 exceeds 0.200"),
    (H(requests=3), Gates(min_requests=10), "only 3 requests"),
])
def test_each_gate_fails_with_its_reason(new: H, gates: Gates, reason: str) -> None:
    v = judge(gates, new, H())
    assert not v.passed and any(reason in r for r in v.reasons), v.reasons


def test_latency_gate_needs_a_previous_version_and_disabled_gates_do_not_judge() -> None:
    assert judge(Gates(), H(p50_ms=500.0), None).passed
    off = Gates(max_error_rate=None, max_latency_regression=None)
    assert judge(off, H(errors=90, p50_ms=500.0), H()).passed


def test_only_gates_the_agents_enforce_go_into_the_probation() -> None:
    assert Gates(min_shadow_agreement=0.9, max_drift=0.2).probation() == {
        "max_error_rate": 0.05, "max_latency_regression": 0.5, "min_shadow_agreement": 0.9}


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1.5h", 5400), ("45", 45), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_duration_says_what_it_looks_like() -> None:
    with pytest.raises(ConfigError, match="10m"):
        parse_duration("ten minutes")
