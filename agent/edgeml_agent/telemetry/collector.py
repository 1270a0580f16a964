"""Turns inference observations into periodic telemetry bodies.

``observe`` runs in request threads, so it only appends to a deque (atomic, no lock, no numpy work).
Everything else — counting, latency buckets, the running input/output summaries used for drift —
happens in the publisher thread when it builds a message. Input/output summaries cost CPU, so they
are computed on a sample of requests, bounded to ``stats_budget`` (default 0.5 %) of the inference
time observed: telemetry must not cost more than about 1 % of inference throughput.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.telemetry.drift import RunningSummary
from edgeml.telemetry.latency import bucket_index, empty_histogram

# (model name) -> (reference_stats of the version being served, or None)
ReferenceLookup = Callable[[str, str], Mapping[str, Any] | None]


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
        self._pending: collections.deque[Any] = collections.deque(maxlen=max_pending)
        self._references = references or (lambda name, version: None)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._stats_budget = stats_budget
        self._inference_s = 0.0
        self._stats_s = 0.0
        self._window_start = time.time()
        self._data_dir = data_dir
        self.overflowed = 0

    # called from request threads: O(1), no lock, no numpy
    def observe(self, observation: Any) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.overflowed += 1
        self._pending.append(observation)

    def _process(self) -> None:
        while self._pending:
            obs = self._pending.popleft()
            key = (obs.model, obs.version)
            w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = _Window()
            w.requests += 1
            w.statuses[str(obs.status)] = w.statuses.get(str(obs.status), 0) + 1
            if obs.error:
                w.errors[obs.error] = w.errors.get(obs.error, 0) + 1
            ms = obs.seconds * 1000.0
            w.latency[bucket_index(ms)] += 1
            w.latency_sum_ms += ms
            self._inference_s += obs.seconds
            if obs.inputs:
                first = next(iter(obs.inputs.values()))
                size = str(first.shape[0]) if getattr(first, "ndim", 0) else "1"
                w.batch_sizes[size] = w.batch_sizes.get(size, 0) + 1
            if obs.error is None and obs.inputs is not None and self._stats_s <= self._stats_budget * self._inference_s:
                started = time.perf_counter()
                self._summarise(w, obs)
                self._stats_s += time.perf_counter() - started

    def _summarise(self, w: _Window, obs: Any) -> None:
        reference = self._references(obs.model, obs.version) or {}
        for side, arrays, summaries in (("inputs", obs.inputs, w.inputs), ("outputs", obs.outputs, w.outputs)):
            for name, value in (arrays or {}).items():
                summary = summaries.get(name)
                if summary is None:
                    summary = summaries[name] = RunningSummary((reference.get(side) or {}).get(name),
                                                               classifier=side == "outputs" and _looks_like_scores(value))
                summary.update(value)
        w.stats_samples += 1

    def snapshot(self, extra_models: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The telemetry body for the window since the last snapshot; starts a new window."""
        self._process()
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
