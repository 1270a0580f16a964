"""The agent's telemetry collector: windows of the agent's request counters, and a sample of requests
for the drift summaries, within the CPU budget."""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pytest

from edgeml.telemetry.latency import bucket_index, empty_histogram
from edgeml_agent.metrics import Metrics
from edgeml_agent.registry import Observation
from edgeml_agent.telemetry.collector import FLOOR_SHARE, TelemetryCollector


def _obs(seconds: float, status: int = 200, error: str | None = None, batch: int = 1,
         model: str = "m", version: str = "1.0.0") -> Observation:
    x = np.full((batch, 8), 0.5, dtype=np.float32)
    return Observation(model, version, seconds, status, error, {"x": x}, {"y": x[:, :2] * 2})


class _Agent:
    """The two observers the agent registers, fed the same requests."""

    def __init__(self, stats_budget: float, max_samples: int = 1000, min_samples: int = 0) -> None:
        self.metrics = Metrics()
        self.collector = TelemetryCollector(self.metrics.totals, stats_budget=stats_budget, max_samples=max_samples,
                                            min_samples=min_samples)

    def serve(self, observation: Observation) -> None:
        self.metrics.observe(observation)
        self.collector.observe(observation)


def test_a_window_reports_counts_latency_buckets_statuses_and_errors_of_its_requests_only() -> None:
    agent = _Agent(stats_budget=0.0)
    agent.serve(_obs(0.003))
    first = agent.collector.snapshot()["models"]
    assert [m["requests"] for m in first] == [1]
    rng = np.random.default_rng(0)
    seconds = [*rng.exponential(0.01, 500).tolist(), 0.00025, 0.0005, 7.0]   # bucket edges and overflow
    want = empty_histogram()
    for i, s in enumerate(seconds):
        want[bucket_index(s * 1000.0)] += 1
        error = "bad_input" if i % 10 == 0 else None
        agent.serve(_obs(s, 400 if error else 200, error, batch=1 + i % 3))
    agent.serve(_obs(0.001, model="other"))
    agent.serve(_obs(0.001, version="2.0.0"))   # a swap in the middle of a window
    body = agent.collector.snapshot()

    models = {(m["model"], m["version"]): m for m in body["models"]}
    m = models[("m", "1.0.0")]
    assert m["requests"] == len(seconds)      # this window's only, not the one before
    assert m["latency_ms"]["buckets"] == want
    assert m["latency_ms"]["sum"] == pytest.approx(sum(seconds) * 1000.0, abs=1e-3)
    errors = sum(1 for i in range(len(seconds)) if i % 10 == 0)
    assert m["statuses"] == {"200": len(seconds) - errors, "400": errors}
    assert m["errors"] == {"bad_input": errors}
    assert m["stats"]["samples"] == 0 and m["batch_sizes"] == {}
    assert models[("other", "1.0.0")]["requests"] == 1
    assert models[("m", "2.0.0")]["requests"] == 1 and models[("m", "2.0.0")]["statuses"] == {"200": 1}
    # the next window starts empty
    assert agent.collector.snapshot()["models"] == []


def test_requests_served_before_telemetry_started_are_not_in_its_first_window() -> None:
    metrics = Metrics()
    for _ in range(5):
        metrics.observe(_obs(0.001))
    collector = TelemetryCollector(metrics.totals, stats_budget=0.0)
    metrics.observe(_obs(0.001))
    assert [m["requests"] for m in collector.snapshot()["models"]] == [1]


def test_a_budget_of_one_summarises_every_good_request_and_their_batch_sizes() -> None:
    agent = _Agent(stats_budget=1.0)
    for i in range(50):
        agent.serve(_obs(0.001, 400 if i % 10 == 0 else 200, "bad_input" if i % 10 == 0 else None, batch=1 + i % 2))
    m = agent.collector.snapshot()["models"][0]
    stats = m["stats"]
    assert stats["samples"] == 45
    assert stats["inputs"]["x"]["count"] == sum((1 + i % 2) * 8 for i in range(50) if i % 10)
    assert m["batch_sizes"] == {"1": 20, "2": 25}
    assert stats["outputs"]["y"]["count"] == sum((1 + i % 2) * 2 for i in range(50) if i % 10)


def test_the_sample_follows_the_budget_and_unsampled_requests_leave_nothing_behind() -> None:
    budget, summary_s = 0.01, 0.0005
    ticks = iter(range(1_000_000))

    def clock() -> float:   # each summary is measured at exactly summary_s, whatever the machine's load
        return next(ticks) * summary_s

    agent = _Agent(stats_budget=budget)
    collector = agent.collector = TelemetryCollector(agent.metrics.totals, stats_budget=budget, clock=clock,
                                                     min_samples=0)
    requests, request_s = 4000, 0.0002
    held = 0
    for i in range(requests):
        agent.serve(_obs(request_s))
        if i % 500 == 499:    # the publisher's tick
            held = max(held, len(collector._queue))
            collector.process()
    samples = collector.snapshot()["models"][0]["stats"]["samples"]
    # The first request is always sampled; after that the rate is set from the measured cost of a
    # summary, so the summaries' CPU time stays within the budget of the inference time (plus one summary,
    # the one that crosses it).
    allowed = budget * requests * request_s / summary_s   # summaries the budget pays for
    assert allowed / 2 <= samples <= allowed + 1   # the rate is re-estimated at each tick, so it lags a little
    assert collector._stats_s <= budget * requests * request_s + summary_s
    # between ticks only the sampled requests are kept: one in ceil(summary_s / (budget × request_s))
    assert held <= 500 // math.ceil(summary_s / (budget * request_s)) + 1


def test_no_budget_keeps_no_requests() -> None:
    agent = _Agent(stats_budget=0.0)
    for _ in range(20):
        agent.serve(_obs(0.001))
    assert not agent.collector._queue
    m = agent.collector.snapshot()["models"][0]
    assert m["requests"] == 20 and m["stats"]["samples"] == 0


def test_sampled_requests_past_the_queue_bound_are_dropped_and_counted() -> None:
    agent = _Agent(stats_budget=1.0, max_samples=10)
    for _ in range(25):
        agent.serve(_obs(0.001))
    body = agent.collector.snapshot()
    assert body["observations_dropped"] == 15
    assert body["models"][0]["requests"] == 25 and body["models"][0]["stats"]["samples"] == 10
    agent.serve(_obs(0.001))   # the next window has room again
    body = agent.collector.snapshot()
    assert body["observations_dropped"] == 0 and body["models"][0]["stats"]["samples"] == 1


def test_snapshots_from_another_thread_while_the_publisher_summarises_lose_and_double_nothing() -> None:
    """The component's stop takes the last snapshot on the stopping thread while the publisher thread
    may be in the middle of a tick: both drain the same queue."""
    agent = _Agent(stats_budget=1.0)
    done = threading.Event()
    failures: list[BaseException] = []

    def publisher_ticks() -> None:
        while not done.is_set():
            try:
                agent.collector.process()
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)
                return

    ticker = threading.Thread(target=publisher_ticks)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # hand the GIL over often, so the two really interleave
    ticker.start()
    counted = sampled = 0
    try:
        for round_ in range(200):
            for _ in range(20):
                agent.serve(_obs(0.001))
            if round_ % 10 == 9:
                for m in agent.collector.snapshot()["models"]:
                    counted += m["requests"]
                    sampled += m["stats"]["samples"]
    finally:
        done.set()
        ticker.join()
        sys.setswitchinterval(switch_interval)
    for m in agent.collector.snapshot()["models"]:
        counted += m["requests"]
        sampled += m["stats"]["samples"]
    assert not failures, failures
    assert counted == sampled == 200 * 20


class _Clocks:
    """Deterministic clocks: every summary costs ``summary_s``; the wall clock is moved by the test."""

    def __init__(self, summary_s: float) -> None:
        self.summary_s, self.calls, self.wall = summary_s, 0, 0.0

    def cpu(self) -> float:
        self.calls += 1
        return self.calls * self.summary_s

    def now(self) -> float:
        return self.wall


def _serve_windows(collector: TelemetryCollector, metrics: Metrics, clocks: _Clocks, *, windows: int,
                   per_window: int, request_s: float, window_s: float = 10.0) -> list[int]:
    """Serve ``per_window`` requests per telemetry window (a publisher tick every 1 s); samples per window."""
    samples = []
    for _ in range(windows):
        for i in range(per_window):
            observation = _obs(request_s)
            metrics.observe(observation)
            collector.observe(observation)
            if (i + 1) % max(1, per_window // 10) == 0:
                clocks.wall += window_s / 10
                collector.process()
        models = collector.snapshot()["models"]
        samples.append(models[0]["stats"]["samples"] if models else 0)
    return samples


def test_at_a_low_request_rate_every_window_still_gets_the_drift_floor() -> None:
    # 40 requests of 2 ms per 10 s window: the 0.2 % budget pays for 0.16 ms of summaries per window, less
    # than one summary of 1 ms; the floor of 16 per window is met from the first window on.
    clocks = _Clocks(summary_s=0.001)
    metrics = Metrics()
    collector = TelemetryCollector(metrics.totals, stats_budget=0.002, min_samples=16, clock=clocks.cpu,
                                   wall_clock=clocks.now)
    samples = _serve_windows(collector, metrics, clocks, windows=4, per_window=40, request_s=0.002)
    assert all(n >= 16 for n in samples), samples
    # without the floor the budget alone starves drift
    clocks = _Clocks(summary_s=0.001)
    metrics = Metrics()
    starved = TelemetryCollector(metrics.totals, stats_budget=0.002, min_samples=0, clock=clocks.cpu,
                                 wall_clock=clocks.now)
    assert sum(_serve_windows(starved, metrics, clocks, windows=4, per_window=40, request_s=0.002)) <= 2


def test_at_a_high_request_rate_the_floor_samples_only_a_few_requests_and_keeps_the_cost_low() -> None:
    # 20,000 requests of 0.5 ms per window (a busy core): after the first window the floor needs one
    # request in ~300, so few tensors are held, and the floor's summaries cost under FLOOR_SHARE of the time.
    clocks = _Clocks(summary_s=0.0001)
    metrics = Metrics()
    collector = TelemetryCollector(metrics.totals, stats_budget=0.0, min_samples=16, clock=clocks.cpu,
                                   wall_clock=clocks.now)
    assert _serve_windows(collector, metrics, clocks, windows=2, per_window=200, request_s=0.0005) == [0, 0]
    clocks = _Clocks(summary_s=0.0001)
    metrics = Metrics()
    collector = TelemetryCollector(metrics.totals, stats_budget=0.0001, min_samples=16, clock=clocks.cpu,
                                   wall_clock=clocks.now)
    samples = _serve_windows(collector, metrics, clocks, windows=3, per_window=20_000, request_s=0.0005)
    assert all(n >= 16 for n in samples), samples
    assert collector._sample_every >= 20_000 // (2 * 16 * 2)   # back to sparse sampling, not every request
    assert collector._floor_s <= FLOOR_SHARE * clocks.wall + clocks.summary_s + 1e-9


def test_the_floor_cost_cap_holds_when_one_summary_is_expensive() -> None:
    # a 50 ms summary (a large image) at 40 requests per 10 s window: the cap (0.5 % of 10 s = 50 ms per
    # window) allows about one floor summary per window, not 16 (plus the budget's first summary and the
    # one that crosses the cap)
    clocks = _Clocks(summary_s=0.05)
    metrics = Metrics()
    collector = TelemetryCollector(metrics.totals, stats_budget=0.002, min_samples=16, clock=clocks.cpu,
                                   wall_clock=clocks.now)
    samples = _serve_windows(collector, metrics, clocks, windows=4, per_window=40, request_s=0.002)
    assert 1 <= sum(samples) <= 4 + 2, samples
    assert collector._floor_s <= FLOOR_SHARE * clocks.wall + clocks.summary_s + 1e-9
