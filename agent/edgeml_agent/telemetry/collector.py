"""Turns what the agent served into periodic telemetry bodies.

Counting is not done here: the agent's metrics already count every request (by status, error kind,
latency bucket) for ``/metrics``, and the collector reads those counters once per tick and reports
the difference since the last message. Counting each request a second time cost ~1 % of a small
model's throughput: on a busy core, every extra Python line in the request path runs with cold caches.

What a request thread does for telemetry is ``observe``: decrement a countdown and, for one request in
many, keep the request (its input and output tensors) for the drift summaries. Those summaries are
computed in the publisher thread, on that sample, bounded to ``stats_budget`` (default 0.2 %) of the
inference time served. A request that is not sampled leaves nothing behind.

A budget in proportion to inference time starves drift at the low request rates most devices run at
(a camera at 1 request/s earns one summary a minute). So each model version also gets a *floor* of
``min_samples`` summaries per telemetry window, whatever the rate: the sampling rate is raised until the
floor is met, and the floor's own cost is capped at ``FLOOR_SHARE`` of the wall time (at full load the
budget already pays for more than the floor, so the floor costs nothing there).
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.jsontypes import JSON
from edgeml.telemetry.drift import RunningSummary, psi
from edgeml.telemetry.latency import empty_histogram
from edgeml_agent.metrics import ModelTotals
from edgeml_agent.registry import Observation

if TYPE_CHECKING:
    import psutil

# (model name) -> (reference_stats of the version being served, or None)
ReferenceLookup = Callable[[str, str], Mapping[str, JSON] | None]
# the agent's request counters, per (model, version), cumulative
Totals = Callable[[], Mapping[tuple[str, str], ModelTotals]]

# The floor's summaries may cost at most this share of the wall time since the collector started: one
# core's 0.5 %, so the floor stays under the 1 % telemetry cost even where one summary is expensive
# (a large image input) and the device is busy.
FLOOR_SHARE = 0.005


@dataclass
class _Sampled:
    """The drift summaries and batch sizes of one model version's sampled requests in this window."""

    inputs: dict[str, RunningSummary] = field(default_factory=dict)
    outputs: dict[str, RunningSummary] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    samples: int = 0


class TelemetryCollector:
    def __init__(self, totals: Totals, references: ReferenceLookup | None = None, *, stats_budget: float = 0.002,
                 min_samples: int = 32, max_samples: int = 1000, data_dir: Path | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.monotonic) -> None:
        self._totals = totals
        self._clock = clock   # times the summaries against the budget (a test gives a deterministic one)
        self._wall_clock = wall_clock   # the floor's cost cap is a share of the wall time
        self._started = wall_clock()
        self._min_samples = min_samples if stats_budget > 0 else 0
        self._floor_s = 0.0              # what the floor's summaries cost (not charged to the budget)
        self._last_window_requests = 0   # sets the sampling rate the floor needs in the next window
        self._references = references or (lambda name, version: None)
        self._reported = totals()   # what the last snapshot reported: the first window starts now
        self._sampled: dict[tuple[str, str], _Sampled] = {}
        # the last windows' samples, newest first, for drift_scores while the current window is young
        self._previous: collections.deque[dict[tuple[str, str], _Sampled]] = collections.deque(maxlen=DRIFT_WINDOWS)
        self._queue: collections.deque[Observation] = collections.deque(maxlen=max_samples)
        self._stats_budget = stats_budget
        self._stats_s = 0.0
        self._summaries = 0
        self._window_start = time.time()
        self._data_dir = data_dir
        # process/snapshot run in the publisher thread, and once more on stop from the stopping thread:
        # they take turns (request threads never take this lock)
        self._folding = threading.Lock()
        self.overflowed = 0   # sampled requests dropped unsummarised because the queue was full
        # Keep one request in `_sample_every` (0: none); re-estimated from the measured cost of a summary
        # and the mean request time, so the budget is met without holding tensors that would be dropped
        # later. Until the first summary is measured, only the first request is kept. A budget of 1 or
        # more means every request.
        self._sample_every = 0 if stats_budget <= 0 else 1 if stats_budget >= 1 else 1 << 30
        self._budget_every = self._sample_every
        self._countdown = 1
        if self._min_samples:
            self._sample_every = 1   # until a window tells the request rate, sample every request for the floor

    # called from request threads: a countdown, no lock, no numpy
    def observe(self, observation: Observation) -> None:
        self._countdown -= 1   # a race between request threads only shifts the sample by one request
        if self._countdown <= 0 and self._sample_every and observation.error is None and observation.inputs:
            self._countdown = self._sample_every
            if len(self._queue) == self._queue.maxlen:   # the publisher thread is stuck: count it
                self.overflowed += 1
            self._queue.append(observation)

    def process(self) -> None:
        """Summarise the requests sampled so far (publisher thread, every tick)."""
        with self._folding:
            self._summarise_queue(self._totals())

    def _summarise_queue(self, totals: Mapping[tuple[str, str], ModelTotals]) -> None:
        inference_s = requests = 0.0
        for t in totals.values():
            inference_s += t.seconds
            requests += t.requests
        queue = self._queue
        for _ in range(len(queue)):
            observation = queue.popleft()
            if self._stats_budget >= 1 or self._stats_s <= self._stats_budget * inference_s:
                started = self._clock()
                self._summarise(observation)
                self._stats_s += self._clock() - started
                self._summaries += 1
            elif self._below_floor(observation) and self._floor_s <= FLOOR_SHARE * (self._wall_clock() - self._started):
                started = self._clock()
                self._summarise(observation)
                self._floor_s += self._clock() - started
        if 0 < self._stats_budget < 1 and self._summaries and inference_s:
            per_summary = self._stats_s / self._summaries
            per_request = inference_s / requests
            self._budget_every = max(1, math.ceil(per_summary / (self._stats_budget * per_request)))
        self._set_sampling_rate()

    def _below_floor(self, observation: Observation) -> bool:
        sampled = self._sampled.get((observation.model, observation.version))
        return sampled is None or sampled.samples < self._min_samples

    def _set_sampling_rate(self) -> None:
        """The budget's rate, raised while some model version of this window is still below the floor."""
        every = self._budget_every
        if self._min_samples and (not self._sampled or any(s.samples < self._min_samples
                                                           for s in self._sampled.values())):
            # aim at twice the floor over the window: the request rate of the last window is only an estimate
            keys = max(1, len(self._sampled))
            every = min(every, max(1, self._last_window_requests // (2 * self._min_samples * keys)))
        self._sample_every = every
        self._countdown = min(self._countdown, every)

    def _summarise(self, observation: Observation) -> None:
        key = (observation.model, observation.version)
        sampled = self._sampled.get(key)
        if sampled is None:
            sampled = self._sampled[key] = _Sampled()
        reference = self._references(*key) or {}
        for side, arrays, summaries in (("inputs", observation.inputs, sampled.inputs),
                                        ("outputs", observation.outputs, sampled.outputs)):
            for name, value in (arrays or {}).items():
                summary = summaries.get(name)
                if summary is None:
                    classifier = side == "outputs" and _looks_like_scores(value)
                    summary = summaries[name] = RunningSummary(_reference(reference, side, name), classifier=classifier)
                summary.update(value)
        first = next(iter((observation.inputs or {}).values()))
        size = str(first.shape[0]) if first.ndim else "1"
        sampled.batch_sizes[size] = sampled.batch_sizes.get(size, 0) + 1
        sampled.samples += 1

    def drift_scores(self, model: str, version: str) -> dict[str, float]:
        """PSI of each input's running summary against the bundle's reference histogram: this window's,
        or, while this one holds fewer than ``min_samples``, the last windows' pooled until they reach it (the
        capture component's drift trigger reads it once a second, never from a request thread). Below the
        floor there is no score: a PSI of a handful of samples is noise, and a new version's first requests
        on a healthy camera would otherwise fire the drift trigger."""
        key = (model, version)
        floor = max(1, self._min_samples)
        with self._folding:
            windows = _drift_windows(self._sampled.get(key), [w[key] for w in self._previous if key in w], floor)
            if not windows:
                return {}
            reference = self._references(model, version) or {}
            scores: dict[str, float] = {}
            for name in windows[0].inputs:
                counts = ((_reference(reference, "inputs", name) or {}).get("histogram") or {})
                ref_counts = counts.get("counts") if isinstance(counts, Mapping) else None
                parts = [w.inputs[name] for w in windows if name in w.inputs and w.inputs[name].n]
                if isinstance(ref_counts, list) and parts:
                    live = parts[0].counts if len(parts) == 1 else np.sum([p.counts for p in parts], axis=0)
                    scores[name] = psi([float(c) for c in ref_counts if isinstance(c, int | float)], live)
            return scores

    def snapshot(self, extra_models: Mapping[tuple[str, str], Mapping[str, JSON]] | None = None) -> dict[str, JSON]:
        """The telemetry body for the window since the last snapshot; starts a new window."""
        system = system_metrics(self._data_dir)
        with self._folding:
            totals = self._totals()
            self._summarise_queue(totals)
            reported, self._reported = self._reported, totals
            sampled, self._sampled = self._sampled, {}
            self._previous.appendleft(sampled)
            dropped, self.overflowed = self.overflowed, 0
            self._last_window_requests = sum(t.requests for t in totals.values()) - sum(
                t.requests for t in reported.values())
            self._set_sampling_rate()   # a new window starts below the floor
            now = time.time()
            started, self._window_start = self._window_start, now
        models: list[dict[str, JSON]] = []
        for key in sorted(set(totals) | set(sampled)):
            entry = _window_entry(key, totals.get(key, _NOTHING), reported.get(key, _NOTHING),
                                  sampled.get(key) or _Sampled())
            if entry is not None:
                entry.update((extra_models or {}).get(key, {}))
                models.append(entry)
        return {"window_s": round(now - started, 3), "models": models, "system": system,
                "observations_dropped": dropped}


def _drift_windows(current: _Sampled | None, previous: list[_Sampled], floor: int) -> list[_Sampled]:
    """The windows a drift score rests on: this one once it holds ``floor`` samples; else the newest
    finished windows that together do (short windows at a low request rate); else those and this one;
    none below the floor."""
    if current is not None and current.samples >= floor:
        return [current]
    pooled: list[_Sampled] = []
    for window in previous:
        if window.samples:
            pooled.append(window)
        if sum(w.samples for w in pooled) >= floor:
            return pooled
    if current is not None and current.samples:
        pooled.append(current)
    return pooled if sum(w.samples for w in pooled) >= floor else []


DRIFT_WINDOWS = 16   # finished windows drift_scores may pool; older samples say little about the camera now

_NOTHING = ModelTotals({}, {}, empty_histogram(), 0.0)   # a model version not counted (yet)


def _window_entry(key: tuple[str, str], now: ModelTotals, before: ModelTotals,
                  sampled: _Sampled) -> dict[str, JSON] | None:
    """One model version's part of a telemetry body: the counters' growth since ``before``."""
    statuses = _growth(now.statuses, before.statuses)
    if not statuses and not sampled.samples:
        return None   # nothing served in this window
    return {
        "model": key[0], "version": key[1], "requests": sum(statuses.values()),
        "errors": _growth(now.errors, before.errors), "statuses": statuses,
        "latency_ms": {"buckets": [a - b for a, b in zip(now.latency, before.latency, strict=True)],
                       "sum": round((now.seconds - before.seconds) * 1000.0, 3)},
        "batch_sizes": sampled.batch_sizes,
        "stats": {"samples": sampled.samples,
                  "inputs": {n: s.to_json() for n, s in sampled.inputs.items()},
                  "outputs": {n: s.to_json() for n, s in sampled.outputs.items()}},
    }


def _growth(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in sorted(now.items()) if n > before.get(k, 0)}


def _reference(reference: Mapping[str, JSON], side: str, name: str) -> Mapping[str, JSON] | None:
    """The bundle's reference statistics of one input or output, when the manifest has them."""
    tensors = reference.get(side)
    stats = tensors.get(name) if isinstance(tensors, Mapping) else None
    return stats if isinstance(stats, Mapping) else None


def _looks_like_scores(value: Array) -> bool:
    v = np.asarray(value)
    return v.dtype.kind == "f" and v.ndim == 2 and v.shape[1] > 1


def system_metrics(data_dir: Path | None = None) -> dict[str, JSON]:
    import psutil

    mem = psutil.virtual_memory()
    out: dict[str, JSON] = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_1m": os.getloadavg()[0],
        "memory_used_mb": round((mem.total - mem.available) / 2**20, 1),
        "memory_percent": mem.percent,
        "process_rss_mb": round(_this_process().memory_info().rss / 2**20, 1),
    }
    try:
        disk = psutil.disk_usage(str(data_dir or "/"))
        out["disk_free_mb"] = round(disk.free / 2**20, 1)
        out["disk_percent"] = disk.percent
    except OSError:
        pass
    temps = thermal_zones()
    if temps:
        out["temperature_c"] = temps
    return out


@functools.cache
def _this_process() -> psutil.Process:
    import psutil

    return psutil.Process()   # built once: it reads /proc to identify the process (~50 us)


def thermal_zones(root: Path = Path("/sys/class/thermal")) -> dict[str, float]:
    """Temperatures in °C by zone type, where the kernel exposes them (most ARM boards do)."""
    temps: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")) if root.is_dir() else []:
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            temps[kind] = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return temps
