"""The capture policy: its shape (bundle default / fleet override), the triggers' decision and the budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.capture import OFF, CaptureBudget, parse_policy
from edgeml.errors import ConfigError
from edgeml_agent.capture.policy import DAY_S, HOUR_S, Budget, decide, top1_probability


def test_no_policy_is_off_and_a_full_policy_round_trips() -> None:
    assert parse_policy(None) == OFF and not OFF.enabled
    doc = {"enabled": True, "keep": "inputs",
           "triggers": {"drift": {"threshold": 0.25, "tensor": "x"}, "low_confidence": {"threshold": 0.6},
                        "shadow_disagreement": True, "random": {"rate": 0.01}},
           "budget": {"samples_per_hour": 10, "bytes_per_day": 1000, "disk_quota_bytes": 5000}}
    policy = parse_policy(doc)
    assert policy.keeps_inputs and not policy.keeps_outputs
    assert (policy.drift_threshold, policy.drift_tensor, policy.confidence_threshold) == (0.25, "x", 0.6)
    assert policy.budget == CaptureBudget(10, 1000, 5000)
    assert parse_policy(policy.to_json()) == policy


@pytest.mark.parametrize("doc, where", [
    ({"enabled": True, "triggers": {"random": {"rate": 2}}}, "$.triggers.random.rate"),
    ({"enabled": True, "tirggers": {}}, "tirggers"),
    ({"triggers": {}}, "enabled"),
    ({"enabled": True, "keep": "everything"}, "$.keep"),
])
def test_a_bad_policy_is_refused_naming_the_key(doc: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=r"capture policy is invalid") as info:
        parse_policy(doc)
    assert where in str(info.value)


def test_top1_probability_of_probabilities_and_of_logits() -> None:
    assert top1_probability(np.array([[0.2, 0.7, 0.1]], np.float32)) == pytest.approx(0.7)
    logits = np.array([[2.0, 0.0, 0.0]], np.float32)
    assert top1_probability(logits) == pytest.approx(np.exp(2) / (np.exp(2) + 2), rel=1e-5)
    assert top1_probability(np.array([[1000.0, 0.0]], np.float32)) == pytest.approx(1.0)   # no overflow
    assert top1_probability(np.array([3], np.int64)) is None


def test_each_trigger_fires_on_its_condition_only() -> None:
    policy = parse_policy({"enabled": True, "triggers": {"drift": {"threshold": 0.25, "tensor": "x"},
                                                         "low_confidence": {"threshold": 0.5},
                                                         "random": {"rate": 0.1}}})
    sure = {"y": np.array([[0.05, 0.9, 0.05]], np.float32)}
    unsure = {"y": np.array([[0.4, 0.35, 0.25]], np.float32)}
    never, always = (lambda: 0.99), (lambda: 0.0)
    assert decide(policy, sure, {"x": 0.1, "z": 5.0}, never) is None   # drift on another tensor
    drift = decide(policy, sure, {"x": 0.4}, never)
    assert drift is not None and drift.trigger == "drift" and drift.figures["drift"] == 0.4
    low = decide(policy, unsure, {"x": 0.1}, never)
    assert low is not None and low.trigger == "low_confidence" and low.figures["probability"] == pytest.approx(0.4)
    rand = decide(policy, sure, None, always)
    assert rand is not None and rand.trigger == "random"
    assert decide(OFF, unsure, {"x": 9.0}, always) is None


def test_drift_without_a_tensor_takes_the_largest_input() -> None:
    policy = parse_policy({"enabled": True, "triggers": {"drift": {"threshold": 0.3}}})
    d = decide(policy, None, {"a": 0.1, "b": 0.5})
    assert d is not None and d.figures["tensor"] == "b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_samples_per_hour_close_the_budget_until_the_oldest_leaves_the_hour() -> None:
    clock = Clock()
    budget = Budget(CaptureBudget(samples_per_hour=3, bytes_per_day=10**9), clock)
    for _ in range(3):
        assert budget.allows()
        budget.spend(10)
        clock.now += 60
    assert not budget.allows() and budget.refused == 1
    assert budget.closed_until == pytest.approx(1000.0 + HOUR_S)   # the first sample's hour ends then
    clock.now = 1000.0 + HOUR_S + 1
    assert budget.allows()


def test_bytes_per_day_refuse_a_sample_that_would_not_fit() -> None:
    clock = Clock()
    budget = Budget(CaptureBudget(samples_per_hour=1000, bytes_per_day=100), clock)
    assert budget.allows_bytes(60)
    budget.spend(60)
    assert not budget.allows_bytes(60) and budget.refused == 1
    assert budget.allows_bytes(40)
    budget.spend(40)
    assert not budget.allows()   # the day's bytes are spent: closed until the first leaves the day
    assert budget.closed_until == pytest.approx(1000.0 + DAY_S)


def test_a_build_with_a_bad_capture_policy_fails_before_any_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgeml.compiler.request import BuildRequest

    with pytest.raises(ConfigError, match=r"\$\.enabled"):
        BuildRequest(tmp_path / "m.onnx", "x86-cpu", capture_policy={"enabled": "yes"})
