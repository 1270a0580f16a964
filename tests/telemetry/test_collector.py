"""The agent's telemetry collector: counting in batches, and sampling tensors within the CPU budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.telemetry.latency import bucket_index, empty_histogram
from edgeml_agent.registry import Observation
from edgeml_agent.telemetry.collector import _INPUTS, TelemetryCollector


def _obs(seconds: float, status: int = 200, error: str | None = None, batch: int = 1,
         model: str = "m", version: str = "1.0.0") -> Observation:
    x = np.full((batch, 8), 0.5, dtype=np.float32)
    return Observation(model, version, seconds, status, error, {"x": x}, {"y": x[:, :2] * 2})


def test_counts_latency_buckets_statuses_errors_and_batch_sizes_match_the_requests() -> None:
    collector = TelemetryCollector(stats_budget=0.0)
    rng = np.random.default_rng(0)
    seconds = [*rng.exponential(0.01, 500).tolist(), 0.00025, 0.0005, 7.0]   # bucket edges and overflow
    want = empty_histogram()
    for i, s in enumerate(seconds):
        want[bucket_index(s * 1000.0)] += 1
        error = "bad_input" if i % 10 == 0 else None
        collector.observe(_obs(s, 400 if error else 200, error, batch=1 + i % 3))
    collector.observe(_obs(0.001, model="other"))
    body = collector.snapshot()

    models = {(m["model"], m["version"]): m for m in body["models"]}
    m = models[("m", "1.0.0")]
    assert m["requests"] == len(seconds)
    assert m["latency_ms"]["buckets"] == want
    assert m["latency_ms"]["sum"] == pytest.approx(sum(seconds) * 1000.0, abs=1e-3)
    errors = sum(1 for i in range(len(seconds)) if i % 10 == 0)
    assert m["statuses"] == {"200": len(seconds) - errors, "400": errors}
    assert m["errors"] == {"bad_input": errors}
    assert m["batch_sizes"] == {str(b): sum(1 for i in range(len(seconds)) if 1 + i % 3 == b) for b in (1, 2, 3)}
    assert m["stats"]["samples"] == 0
    assert models[("other", "1.0.0")]["requests"] == 1
    # the next window starts empty
    assert collector.snapshot()["models"] == []


def test_a_budget_of_one_summarises_every_good_request() -> None:
    collector = TelemetryCollector(stats_budget=1.0)
    for i in range(50):
        collector.observe(_obs(0.001, 500 if i < 5 else 200, "runtime" if i < 5 else None))
    stats = collector.snapshot()["models"][0]["stats"]
    assert stats["samples"] == 45
    assert stats["inputs"]["x"]["count"] == 45 * 8
    assert stats["outputs"]["y"]["count"] == 45 * 2


def test_the_sample_follows_the_budget_and_unsampled_requests_leave_their_tensors_behind() -> None:
    budget = 0.01
    collector = TelemetryCollector(stats_budget=budget)
    requests, request_s = 4000, 0.0002
    held = 0
    for i in range(requests):
        collector.observe(_obs(request_s))
        if i % 500 == 499:    # the publisher's tick
            held = max(held, sum(1 for seen in collector._pending if seen[_INPUTS] is not None))
            collector.process()
    samples = collector.snapshot()["models"][0]["stats"]["samples"]
    # The first request is always sampled; after that the rate is set from the measured cost of a
    # summary, so the summaries' CPU time stays within the budget of the inference time (plus one).
    assert 1 <= samples < requests / 4
    assert collector._stats_s <= budget * requests * request_s + collector._stats_s / samples
    assert held < 500 / 4   # the queue between ticks holds the sampled requests' tensors, not all of them


def test_no_budget_keeps_no_tensors() -> None:
    collector = TelemetryCollector(stats_budget=0.0)
    for _ in range(20):
        collector.observe(_obs(0.001))
    assert all(seen[_INPUTS] is None and seen[_INPUTS + 1] is None for seen in collector._pending)
    assert collector.snapshot()["models"][0]["stats"]["samples"] == 0


def test_a_full_queue_drops_the_oldest_and_says_how_many() -> None:
    collector = TelemetryCollector(stats_budget=0.0, max_pending=10)
    for _ in range(25):
        collector.observe(_obs(0.001))
    body = collector.snapshot()
    assert body["observations_dropped"] == 15
    assert body["models"][0]["requests"] == 10
