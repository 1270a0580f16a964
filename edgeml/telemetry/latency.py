"""Fixed latency buckets, so histograms from many devices add up and fleet-wide percentiles are exact
to the bucket (no device sends a percentile that cannot be merged)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Upper bounds in milliseconds; one more bucket (overflow) counts everything slower.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000,
)


def bucket_index(ms: float) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if ms <= bound:
            return i
    return len(LATENCY_BUCKETS_MS)


def empty_histogram() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS_MS) + 1)


def merge(histograms: Iterable[Sequence[int]]) -> list[int]:
    total = empty_histogram()
    for h in histograms:
        if len(h) != len(total):
            continue  # a histogram from an incompatible agent version is not mixed in
        for i, c in enumerate(h):
            total[i] += int(c)
    return total


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0-100) as the upper bound of the bucket that holds it, in ms.

    Overflow returns twice the last bound: "slower than 5 s" is what the histogram can say.
    """
    total = sum(histogram)
    if total == 0:
        return None
    rank = q / 100.0 * total
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= rank and count:
            return float(LATENCY_BUCKETS_MS[i]) if i < len(LATENCY_BUCKETS_MS) else LATENCY_BUCKETS_MS[-1] * 2
    return LATENCY_BUCKETS_MS[-1] * 2
