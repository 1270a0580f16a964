"""The drift trigger's figures: the telemetry collector's running PSI per input against the bundle's
reference, read by the capture component (this window's, or the last one's while this one is young)."""

from __future__ import annotations

import numpy as np

from edgeml.compiler.stats import reference_stats
from edgeml_agent.metrics import Metrics
from edgeml_agent.registry import Observation
from edgeml_agent.telemetry.collector import TelemetryCollector


def test_shifted_inputs_score_high_calibration_like_ones_low_and_a_new_window_keeps_the_last_score() -> None:
    rng = np.random.default_rng(0)
    calib = rng.normal(0.0, 1.0, (512, 4)).astype(np.float32)
    stats = reference_stats({"x": calib}, {"y": calib[:, :2]}, samples=512)
    metrics = Metrics()
    collector = TelemetryCollector(metrics.totals, lambda model, version: stats, stats_budget=1.0, min_samples=8)

    def serve(shift: float, count: int) -> None:
        for _ in range(count):
            x = rng.normal(shift, 1.0, (1, 4)).astype(np.float32)
            obs = Observation("m", "1.0.0", 0.001, 200, None, {"x": x}, {"y": x[:, :2]})
            metrics.observe(obs)
            collector.observe(obs)
        collector.process()

    assert collector.drift_scores("m", "1.0.0") == {}   # nothing seen yet
    serve(0.0, 200)
    assert collector.drift_scores("m", "1.0.0")["x"] < 0.1
    collector.snapshot()
    serve(2.5, 200)
    shifted = collector.drift_scores("m", "1.0.0")["x"]
    assert shifted > 0.25
    collector.snapshot()
    serve(2.5, 2)   # a young window: the last full window's score stands
    assert collector.drift_scores("m", "1.0.0")["x"] == shifted
    assert collector.drift_scores("m", "2.0.0") == {}


def test_a_new_versions_first_few_samples_give_no_score_and_short_windows_are_pooled_to_the_floor() -> None:
    # a version just installed on a healthy camera: its first requests are few, and two unlucky ones
    # used to score as drift and fire the trigger (the demo's camera-2 captured 6 "drift" samples so)
    rng = np.random.default_rng(1)
    calib = rng.normal(0.0, 1.0, (512, 4)).astype(np.float32)
    stats = reference_stats({"x": calib}, {"y": calib[:, :2]}, samples=512)
    metrics = Metrics()
    collector = TelemetryCollector(metrics.totals, lambda model, version: stats, stats_budget=1.0, min_samples=8)

    def serve(shift: float, count: int) -> None:
        for _ in range(count):
            x = rng.normal(shift, 1.0, (1, 4)).astype(np.float32)
            obs = Observation("m", "2.0.0", 0.001, 200, None, {"x": x}, {"y": x[:, :2]})
            metrics.observe(obs)
            collector.observe(obs)
        collector.process()

    serve(2.5, 3)
    assert collector.drift_scores("m", "2.0.0") == {}   # 3 samples, below the floor of 8: no score yet
    collector.snapshot()
    serve(2.5, 3)   # a slow device (short windows): 6 samples over two windows, still below the floor
    assert collector.drift_scores("m", "2.0.0") == {}
    collector.snapshot()
    serve(2.5, 3)   # three short windows pooled reach it
    assert collector.drift_scores("m", "2.0.0")["x"] > 0.25
