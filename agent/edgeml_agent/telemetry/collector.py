"""Turns inference observations into periodic telemetry bodies.

``observe`` runs in request threads, so it only appends a small tuple to a deque (atomic, no lock, no
numpy). Everything else — counting, latency buckets, the running input/output summaries used for
drift — happens in the publisher thread, in batches, once per publisher tick (at most a second apart,
so the queue stays short whatever the telemetry interval).

Input/output summaries cost CPU, so they are computed on a sample of requests, bounded to
``stats_budget`` (default 0.5 %) of the inference time observed: telemetry must not cost more than
about 1 % of inference throughput. The sampling decision is made in ``observe``: a request that is not
sampled leaves its arrays behind, so a busy agent never holds more than the sampled requests' tensors.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.telemetry.drift import RunningSummary
from edgeml.telemetry.latency import LATENCY_BUCKETS_MS, empty_histogram

# (model name) -> (reference_stats of the version being served, or None)
ReferenceLookup = Callable[[str, str], Mapping[str, Any] | None]

_BUCKET_BOUNDS = np.asarray(LATENCY_BUCKETS_MS, dtype=np.float64)


# One queued request: (model, version, seconds, status, error, shape of the first input, inputs,
# outputs), the tensors only when the request was sampled. A plain tuple: building it is most of what
# telemetry costs a request thread, and a NamedTuple's constructor is Python code (~3x slower).
_Seen = tuple[str, str, float, int, "str | None", "tuple[int, ...] | None",
              "Mapping[str, np.ndarray] | None", "Mapping[str, np.ndarray] | None"]
_INPUTS = 6


@dataclass
class _Window:
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=empty_histogram)
    latency_sum_ms: float = 0.0
    batch_sizes: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, RunningSummary] = field(default_factory=dict)
    outputs: dict[str, RunningSummary] = field(default_factory=dict)
    stats_samples: int = 0


class TelemetryCollector:
    def __init__(self, references: ReferenceLookup | None = None, *, stats_budget: float = 0.005,
                 max_pending: int = 100_000, data_dir: Path | None = None) -> None:
        self._pending: collections.deque[_Seen] = collections.deque(maxlen=max_pending)
        self._references = references or (lambda name, version: None)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._stats_budget = stats_budget
        self._inference_s = 0.0
        self._stats_s = 0.0
        self._summaries = 0
        self._requests = 0
        self._window_start = time.time()
        self._data_dir = data_dir
        self.overflowed = 0
        # Keep the tensors of one request in `_sample_every` (0: none); re-estimated from the measured
        # cost of a summary and the mean request time, so the budget is met without holding arrays that
        # would be dropped later. Until the first summary is measured, only the first request is kept.
        # A budget of 1 or more means every request.
        self._sample_every = 0 if stats_budget <= 0 else 1 if stats_budget >= 1 else 1 << 30
        self._countdown = 1

    # called from request threads: O(1), no lock, no numpy
    def observe(self, observation: Any) -> None:
        inputs = observation.inputs
        shape = next(iter(inputs.values())).shape if inputs else None
        self._countdown -= 1   # a race between request threads only shifts the sample by one request
        if self._countdown <= 0 and self._sample_every and observation.error is None and inputs is not None:
            self._countdown = self._sample_every
            outputs = observation.outputs
        else:
            inputs = outputs = None
        if len(self._pending) == self._pending.maxlen:
            self.overflowed += 1
        self._pending.append((observation.model, observation.version, observation.seconds, observation.status,
                              observation.error, shape, inputs, outputs))

    def process(self) -> None:
        """Fold the observations queued so far into the current window (publisher thread)."""
        pending = self._pending
        by_model: dict[tuple[str, str], list[_Seen]] = {}
        for _ in range(len(pending)):
            seen = pending.popleft()
            group = by_model.get(seen[:2])
            if group is None:
                group = by_model[seen[:2]] = []
            group.append(seen)
        for (model, version), group in by_model.items():
            w = self._windows.get((model, version))
            if w is None:
                w = self._windows[(model, version)] = _Window()
            self._count(w, group)
            for *_, inputs, outputs in group:
                if inputs is not None and self._stats_s <= self._stats_budget * self._inference_s:
                    started = time.perf_counter()
                    self._summarise(w, model, version, inputs, outputs)
                    self._stats_s += time.perf_counter() - started
                    self._summaries += 1
        self._resample()

    def _count(self, w: _Window, group: list[_Seen]) -> None:
        ms = np.fromiter((s[2] for s in group), dtype=np.float64, count=len(group)) * 1000.0
        buckets = np.bincount(np.searchsorted(_BUCKET_BOUNDS, ms, side="left"), minlength=len(w.latency))
        for i, count in enumerate(buckets.tolist()):
            w.latency[i] += count
        total_ms = float(ms.sum())
        w.requests += len(group)
        self._requests += len(group)
        w.latency_sum_ms += total_ms
        self._inference_s += total_ms / 1000.0
        for status, count in collections.Counter(s[3] for s in group).items():
            w.statuses[str(status)] = w.statuses.get(str(status), 0) + count
        for error, count in collections.Counter(s[4] for s in group if s[4]).items():
            w.errors[str(error)] = w.errors.get(str(error), 0) + count
        for shape, count in collections.Counter(s[5] for s in group if s[5] is not None).items():
            size = str(shape[0]) if shape else "1"
            w.batch_sizes[size] = w.batch_sizes.get(size, 0) + count

    def _resample(self) -> None:
        if not 0 < self._stats_budget < 1 or not self._summaries or not self._inference_s:
            return
        per_summary = self._stats_s / self._summaries
        per_request = self._inference_s / self._requests
        self._sample_every = max(1, math.ceil(per_summary / (self._stats_budget * per_request)))
        self._countdown = min(self._countdown, self._sample_every)

    def _summarise(self, w: _Window, model: str, version: str, inputs: Mapping[str, np.ndarray],
                   outputs: Mapping[str, np.ndarray] | None) -> None:
        reference = self._references(model, version) or {}
        for side, arrays, summaries in (("inputs", inputs, w.inputs), ("outputs", outputs, w.outputs)):
            for name, value in (arrays or {}).items():
                summary = summaries.get(name)
                if summary is None:
                    summary = summaries[name] = RunningSummary((reference.get(side) or {}).get(name),
                                                               classifier=side == "outputs" and _looks_like_scores(value))
                summary.update(value)
        w.stats_samples += 1

    def snapshot(self, extra_models: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The telemetry body for the window since the last snapshot; starts a new window."""
        self.process()
        now = time.time()
        models = []
        for (name, version), w in sorted(self._windows.items()):
            entry: dict[str, Any] = {
                "model": name, "version": version, "requests": w.requests, "errors": w.errors,
                "statuses": w.statuses, "latency_ms": {"buckets": w.latency, "sum": round(w.latency_sum_ms, 3)},
                "batch_sizes": w.batch_sizes,
                "stats": {"samples": w.stats_samples,
                          "inputs": {n: s.to_json() for n, s in w.inputs.items()},
                          "outputs": {n: s.to_json() for n, s in w.outputs.items()}},
            }
            entry.update((extra_models or {}).get((name, version), {}))
            models.append(entry)
        body = {"window_s": round(now - self._window_start, 3), "models": models, "system": system_metrics(self._data_dir),
                "observations_dropped": self.overflowed}
        self._windows = {}
        self._window_start = now
        self.overflowed = 0
        return body


def _looks_like_scores(value: Any) -> bool:
    v = np.asarray(value)
    return v.dtype.kind == "f" and v.ndim == 2 and v.shape[1] > 1


def system_metrics(data_dir: Path | None = None) -> dict[str, Any]:
    import psutil

    mem = psutil.virtual_memory()
    out: dict[str, Any] = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_1m": os.getloadavg()[0],
        "memory_used_mb": round((mem.total - mem.available) / 2**20, 1),
        "memory_percent": mem.percent,
        "process_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
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
