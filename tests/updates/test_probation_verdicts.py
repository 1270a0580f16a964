"""Probation's verdicts on the real machine (tests/updates/machine_rig.py), with the live health of the
new version scripted: the error-rate and latency limits and where they sit exactly, the minimum number
of requests, the desired state's gates over the agent's, the polling until the deadline, shadow
agreement. test_machine_inprocess.py proves the same gates with live traffic."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle.verify import VerifiedBundle
from edgeml.errors import UpdateError
from edgeml.protocol import UpdateState as S
from edgeml_agent.registry import Observation
from edgeml_agent.updates import states
from edgeml_agent.updates.health import Shadow, VersionHealth
from tests.updates.machine_rig import Bundles, MachineRig


def health(requests: int, errors: int = 0, p50: float | None = 1.0) -> VersionHealth:
    return VersionHealth(requests, errors, p50, p50)


def test_an_error_rate_over_the_limit_rolls_back_with_the_numbers(rig: MachineRig) -> None:
    rig.health.live["2.0.0"] = health(10, 2)
    rec = rig.update("2.0.0")
    assert rec.reason == "error rate 20.0% over 10 requests exceeds 5.0%"
    assert rig.chain(rec)[-5:] == ["switching", "probation", "rolling_back", "failed", "idle"]
    assert rig.serving() == "1.0.0" and rig.services.store.current("m") == "1.0.0"
    assert rec.refused == {"m@2.0.0": rec.reason}


def test_an_error_rate_at_the_limit_passes(rig: MachineRig) -> None:
    rig.health.live["2.0.0"] = health(20, 1)      # exactly 5 %
    assert rig.update("2.0.0").committed == {"m": "2.0.0"}


def test_too_few_requests_are_not_judged(rig: MachineRig) -> None:
    rig.health.live["2.0.0"] = health(4, 4, p50=100.0)   # min_requests = 5
    rig.health.live["1.0.0"] = health(50)
    assert rig.update("2.0.0").committed == {"m": "2.0.0"}


def test_just_enough_requests_are_judged(rig: MachineRig) -> None:
    rig.health.live["2.0.0"] = health(5, 5)
    assert "error rate 100.0% over 5 requests" in (rig.update("2.0.0").reason or "")


def test_a_latency_over_the_limit_against_the_previous_version_rolls_back(rig: MachineRig) -> None:
    rig.health.live["1.0.0"] = health(50, p50=1.0)    # the baseline, taken as the update begins
    rig.health.live["2.0.0"] = health(50, p50=2.5)    # max_latency_regression 1.0: limit 2.0 ms
    rec = rig.update("2.0.0")
    assert rec.reason == "p50 latency 2.50 ms vs 1.00 ms before the update (limit 2.00 ms)"
    assert rec.baseline["p50_ms"] == 1.0
    assert rig.serving() == "1.0.0"


def test_a_latency_at_the_limit_passes(rig: MachineRig) -> None:
    rig.health.live["1.0.0"] = health(50, p50=1.0)
    rig.health.live["2.0.0"] = health(50, p50=2.0)
    assert rig.update("2.0.0").committed == {"m": "2.0.0"}


def test_latency_is_not_judged_on_too_few_requests(rig: MachineRig) -> None:
    rig.health.live["1.0.0"] = health(50, p50=1.0)
    rig.health.live["2.0.0"] = health(4, p50=50.0)
    assert rig.update("2.0.0").committed == {"m": "2.0.0"}


def test_the_desired_states_gates_override_the_agents(rig: MachineRig) -> None:
    rig.health.live["2.0.0"] = health(10, 5)
    rec = rig.update("2.0.0", probation={"seconds": 0, "max_error_rate": 0.6, "min_requests": 5})
    assert rec.committed == {"m": "2.0.0"}


def test_probation_polls_until_its_deadline_then_judges_once_more(rig: MachineRig) -> None:
    clock = rig.use_fake_clock()
    persisted: list[float | None] = []
    rig.on_sleep = lambda _: persisted.append(rig.records.load().probation_started)
    rig.health.live["2.0.0"] = health(50)
    started = clock[0]
    rec = rig.update("2.0.0", probation={"seconds": 1.0, "min_requests": 5})
    assert rec.committed == {"m": "2.0.0"}
    assert persisted[0] == started     # saved as it began: a restart resumes it, not a fresh one
    assert rig.sleeps == [0.25, 0.25, 0.25, 0.25]
    judged = [a for a in rig.health.asked if a[1] == "2.0.0"]
    assert len(judged) == 5 and all(since is not None for *_, since in judged)


def test_probation_stops_at_the_first_unhealthy_verdict(rig: MachineRig) -> None:
    rig.use_fake_clock()
    rig.health.live["2.0.0"] = health(50, 50)
    rec = rig.update("2.0.0", probation={"seconds": 10.0, "min_requests": 5})
    assert "error rate 100.0%" in (rec.reason or "")
    assert rig.sleeps == [0.0]            # the rollback's first (zero) pause; no probation poll
    assert len([a for a in rig.health.asked if a[1] == "2.0.0"]) == 1


@pytest.mark.parametrize(("compared", "wrong", "min_agree", "reason"), [
    (5, 5, 0.9, "shadow agreement 0.0% over 5 requests is below 90.0%"),
    (5, 1, 0.8, None),     # exactly at the limit
    (4, 4, 0.9, None),     # too few comparisons to judge
])
def test_shadow_agreement_against_the_previous_version(rig: MachineRig, compared: int, wrong: int, min_agree: float,
                                                       reason: str | None) -> None:
    x = np.random.default_rng(0).random((1, 4), dtype=np.float32)
    shadows: list[Shadow] = []

    def answer(_: float) -> None:   # the new version's answers: ``wrong`` of them name another class
        shadow = rig.ctx.shadow
        if shadow is None or shadows:
            return
        shadows.append(shadow)
        assert shadow.fraction == 1.0 and rig.health.shadow is shadow
        assert shadow.reference.version == "1.0.0"      # a private copy of the previous version
        right = shadow.reference.predict({"x": x})["y"]
        other = np.zeros_like(right)
        other[0, (int(right.argmax()) + 1) % right.shape[1]] = 1.0
        for i in range(compared):
            rig.health.observe(Observation("m", "2.0.0", 0.001, 200, inputs={"x": x},
                                           outputs={"y": other if i < wrong else right}))
        deadline = time.monotonic() + 10
        while shadow.compared < compared and time.monotonic() < deadline:
            time.sleep(0.01)
    rig.use_fake_clock()
    rig.on_sleep = answer
    rig.health.live["2.0.0"] = health(50)
    rec = rig.update("2.0.0", probation={"seconds": 1.0, "min_requests": 5, "min_shadow_agreement": min_agree,
                                         "shadow_fraction": 1.0})
    assert shadows and rec.reason == reason
    # agreement is judged once, at the end of probation (then the rollback's first pause)
    assert rig.sleeps == [0.25] * 4 + ([0.0] if reason else [])
    assert rig.serving() == ("1.0.0" if reason else "2.0.0")
    # after probation nothing keeps the private copy of the previous version alive or fed
    assert rig.ctx.shadow is None and rig.health.shadow is None
    with pytest.raises(Exception):   # noqa: B017 -- closed: the runtime session is gone
        shadows[0].reference.predict({"x": x})


def test_a_previous_version_that_cannot_load_means_no_shadow(rig: MachineRig, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    store = rig.services.store
    real_open = store.open

    def open_(name: str, version: str | None = None) -> VerifiedBundle:
        if version == "1.0.0":
            raise UpdateError("m@1.0.0 is not installed")
        return real_open(name, version)
    monkeypatch.setattr(store, "open", open_)
    rig.health.live["2.0.0"] = health(50)
    with caplog.at_level("WARNING", logger="edgeml_agent.updates"):
        rec = rig.update("2.0.0", probation={"seconds": 0, "min_requests": 5, "min_shadow_agreement": 0.9})
    assert rec.committed == {"m": "2.0.0"} and rig.ctx.shadow is None
    logged = [r.getMessage() for r in caplog.records]
    assert "cannot shadow-run the previous version: m@1.0.0 is not installed" in logged


def test_no_shadow_when_agreement_is_not_asked_for(rig: MachineRig, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    monkeypatch.setattr(states, "Shadow", lambda *a: made.append(a))
    rig.health.live["2.0.0"] = health(50)
    assert rig.update("2.0.0").committed == {"m": "2.0.0"}
    assert made == []


def test_a_first_install_has_no_shadow_and_no_latency_baseline(tmp_path: Path, bundles: Bundles,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch, min_shadow_agreement=0.5)
    r.health.live["2.0.0"] = health(50, p50=100.0)     # and no baseline to hold its latency against
    assert r.update("2.0.0").committed == {"m": "2.0.0"}
    assert r.ctx.shadow is None
    r.services.registry.close()


def test_the_last_poll_sleeps_only_until_the_deadline(rig: MachineRig) -> None:
    rig.use_fake_clock()
    rig.health.live["2.0.0"] = health(50)
    assert rig.update("2.0.0", probation={"seconds": 0.6, "min_requests": 5}).committed == {"m": "2.0.0"}
    assert rig.sleeps[:2] == [0.25, 0.25] and rig.sleeps[2] == pytest.approx(0.1) and len(rig.sleeps) == 3


def test_a_resumed_probation_keeps_its_start_and_judges_the_requests_since_then(rig: MachineRig) -> None:
    clock = rig.use_fake_clock()
    rig.health.live["2.0.0"] = health(50)
    state = rig.parse(rig.wire("2.0.0", probation={"seconds": 1000.5, "min_requests": 5}))
    rig.machine.begin(state, state.models[0])
    rec = rig.records.load()
    while rec.state != S.PROBATION:
        rec = rig.machine.step(rec)
    rec.probation_started = clock[0] - 1000    # as if it had begun 1000 s before the agent restarted
    rig.records.save(rec)
    before = time.monotonic()
    assert rig.machine.run_until_idle().committed == {"m": "2.0.0"}
    assert rig.sleeps == [0.25, 0.25]          # only what was left of it
    since = next(a[2] for a in rig.health.asked if a[1] == "2.0.0")
    assert since is not None and before - 1000 <= since <= time.monotonic() - 1000


def test_the_agents_own_gates_apply_where_the_desired_state_sets_none(tmp_path: Path, bundles: Bundles,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch, probation_s=0.5, min_requests=5)
    r.install("1.0.0")
    r.use_fake_clock()
    r.health.live["2.0.0"] = health(4, 4)     # under the agent's min_requests: not judged
    assert r.update("2.0.0", probation={"max_error_rate": 0.05}).committed == {"m": "2.0.0"}
    assert r.sleeps == [0.25, 0.25]            # the agent's probation_s
    r.services.registry.close()
