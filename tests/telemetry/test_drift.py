from __future__ import annotations

import numpy as np
import pytest

from edgeml.compiler.stats import reference_stats
from edgeml.telemetry.drift import RunningSummary, drift_report, merge_summaries, psi
from edgeml.telemetry.latency import LATENCY_BUCKETS_MS, bucket_index, empty_histogram, merge, percentile


def test_psi_is_zero_for_identical_and_grows_with_shift() -> None:
    ref = [10, 20, 40, 20, 10]
    assert psi(ref, ref) == pytest.approx(0.0)
    assert psi(ref, [5, 10, 20, 10, 5]) < 0.01          # same shape, fewer samples
    assert psi([50, 50, 0, 0], [25, 25, 1, 0]) < 0.25   # one live value in a bin calibration left empty
    small, large = psi(ref, [12, 22, 36, 20, 10]), psi(ref, [0, 0, 10, 40, 50])
    assert 0 < small < 0.1 < 0.25 < large


def _reference(rng: np.random.Generator, weights: np.ndarray) -> dict:
    x = rng.normal(0.0, 1.0, (256, 8)).astype(np.float32)
    return reference_stats({"x": x}, {"probs": x @ weights}, samples=256)


def _live(reference: dict, rng: np.random.Generator, shift: float, weights: np.ndarray) -> dict:
    sx = RunningSummary(reference["inputs"]["x"])
    sp = RunningSummary(reference["outputs"]["probs"], classifier=True)
    for _ in range(64):
        x = rng.normal(shift, 1.0, (4, 8)).astype(np.float32)
        sx.update(x)
        sp.update(x @ weights)
    return {"inputs": {"x": sx.to_json()}, "outputs": {"probs": sp.to_json()}}


def test_live_data_from_the_calibration_distribution_has_low_drift_and_shifted_data_high() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, (8, 4)).astype(np.float32)
    reference = _reference(rng, weights)
    same = drift_report(reference, _live(reference, rng, 0.0, weights))
    shifted = drift_report(reference, _live(reference, rng, 2.0, weights))
    assert same["score"] is not None and same["score"] < 0.1
    assert shifted["score"] > 0.25
    assert shifted["tensors"]["inputs/x"] > 1.0
    assert "outputs/probs:classes" in shifted["tensors"]


def test_values_outside_the_reference_range_land_in_the_edge_bins() -> None:
    ref = {"histogram": {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [1, 1, 1]}}
    s = RunningSummary(ref)
    s.update(np.array([-5.0, 0.5, 1.5, 2.5, 3.0, 99.0]))
    assert s.to_json()["histogram"]["counts"] == [2, 1, 3]
    assert s.to_json()["min"] == -5.0 and s.to_json()["max"] == 99.0


def test_summaries_merge_across_messages() -> None:
    ref = {"histogram": {"edges": [0.0, 1.0, 2.0], "counts": [1, 1]}}
    a, b = RunningSummary(ref), RunningSummary(ref)
    a.update(np.array([0.5, 0.5]))
    b.update(np.array([1.5]))
    merged = merge_summaries([a.to_json(), b.to_json()])
    assert merged["histogram"]["counts"] == [2, 1]
    assert merged["count"] == 3 and merged["mean"] == pytest.approx(2.5 / 3)


def test_latency_histograms_merge_and_give_bucket_percentiles() -> None:
    h1, h2 = empty_histogram(), empty_histogram()
    for ms in [0.8] * 90:
        h1[bucket_index(ms)] += 1
    for ms in [40.0] * 10:
        h2[bucket_index(ms)] += 1
    total = merge([h1, h2])
    assert sum(total) == 100
    assert percentile(total, 50) == 1.0
    assert percentile(total, 95) == 50.0
    assert percentile(empty_histogram(), 50) is None
    assert bucket_index(10_000) == len(LATENCY_BUCKETS_MS)
