"""Request counts, errors and latency per model and version: the agent's one per-request tally.

An observer of the model registry; counters live under one lock. They are rendered on scrape as
Prometheus text, and the telemetry collector reads them (``totals``) once per tick rather than
counting every request a second time. The latency buckets are the fleet's fixed ones, so both views
agree and histograms from many devices add up.

Two classes of failed request, kept apart:

- a model's errors (``observe``: status >= 500, e.g. the runtime failed on valid inputs) feed the error
  rate that probation and the fleet's rollout gates read, through ``totals`` and the registry observers;
- client errors (``count_rejected``: a 4xx for bad input, an unacceptable ``Accept``...) are counted only
  here, by reason, and reach neither the observers nor ``totals``: otherwise any local client could push
  a model's error rate over a gate, or dilute it with bad requests.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from edgeml.telemetry.latency import LATENCY_BUCKETS_MS
from edgeml_agent.registry import ModelRegistry, Observation

BUCKETS = tuple(ms / 1000.0 for ms in LATENCY_BUCKETS_MS)   # seconds, as Prometheus has it


@dataclass(frozen=True)
class ModelTotals:
    """Everything counted for one model version since the agent started."""

    statuses: dict[str, int]     # requests by HTTP status
    errors: dict[str, int]       # failed requests by kind
    latency: list[int]           # per bucket of LATENCY_BUCKETS_MS (not cumulative), the last one overflow
    seconds: float               # the requests' time in the agent, summed

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(metric: str, kind: str, what: str) -> list[str]:
    return [f"# HELP {metric} {what}", f"# TYPE {metric} {kind}"]


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._errors: dict[tuple[str, str, str], int] = defaultdict(int)
        self._hist: dict[tuple[str, str], list[int]] = {}
        self._sum: dict[tuple[str, str], float] = defaultdict(float)
        self._http: dict[str, int] = defaultdict(int)
        self._rejected: dict[tuple[str, str, str], int] = defaultdict(int)

    def observe(self, obs: Observation) -> None:
        key = (obs.model, obs.version)
        with self._lock:
            self._requests[(obs.model, obs.version, str(obs.status))] += 1
            if obs.error:
                self._errors[(obs.model, obs.version, obs.error)] += 1
            # per-bucket (not cumulative) counts; the last slot is +Inf. Cumulated when rendered.
            counts = self._hist.setdefault(key, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, obs.seconds)] += 1
            self._sum[key] += obs.seconds

    def totals(self) -> dict[tuple[str, str], ModelTotals]:
        """A copy of the counters per (model, version)."""
        out: dict[tuple[str, str], ModelTotals] = {}
        with self._lock:
            for (m, v), counts in self._hist.items():
                out[(m, v)] = ModelTotals({}, {}, list(counts), self._sum[(m, v)])
            for (m, v, code), n in self._requests.items():
                out[(m, v)].statuses[code] = n
            for (m, v, kind), n in self._errors.items():
                out[(m, v)].errors[kind] = n
        return out

    def count_rejected(self, model: str, version: str, reason: str) -> None:
        """A request the model never had a fair chance at: the client's mistake, not the model's error."""
        with self._lock:
            self._rejected[(model, version, reason)] += 1

    def count_http(self, status: int) -> None:
        with self._lock:
            self._http[str(status)] += 1

    def render(self, registry: ModelRegistry | None = None) -> str:
        lines: list[str] = []
        with self._lock:
            counters: tuple[tuple[str, str, Mapping[tuple[str, str, str], int], tuple[str, str, str]], ...] = (
                ("edgeml_requests_total", "Inference requests the model ran (or failed in), by version and status.",
                 self._requests, ("model", "version", "code")),
                ("edgeml_request_errors_total", "The model's failed inference requests (5xx), by kind.",
                 self._errors, ("model", "version", "kind")),
                ("edgeml_requests_rejected_total", "Inference requests refused as the client's mistake (4xx), "
                 "by reason; not in the error rate.", self._rejected, ("model", "version", "reason")),
            )
            for metric, what, table, names in counters:
                lines += _family(metric, "counter", what)
                for key, value in sorted(table.items()):
                    lines.append(f"{metric}{_labels(**dict(zip(names, key, strict=True)))} {value}")
            lines += _family("edgeml_request_duration_seconds", "histogram",
                             "Time in the agent per inference request.")
            for (m, v), counts in sorted(self._hist.items()):
                total = 0
                for bound, n in zip((*[repr(b) for b in BUCKETS], "+Inf"), counts, strict=True):
                    total += n
                    bucket = _labels(model=m, version=v, le=bound)
                    lines.append(f"edgeml_request_duration_seconds_bucket{bucket} {total}")
                labels = _labels(model=m, version=v)
                lines.append(f"edgeml_request_duration_seconds_sum{labels} {self._sum[(m, v)]:.6f}")
                lines.append(f"edgeml_request_duration_seconds_count{labels} {total}")
            lines += _family("edgeml_http_responses_total", "counter", "Every HTTP response by status.")
            for code, n in sorted(self._http.items()):
                lines.append(f"edgeml_http_responses_total{_labels(code=code)} {n}")
        if registry is not None:
            lines += _family("edgeml_model_info", "gauge", "The model versions being served and where they run.")

            for lm in registry.models():
                served = lm.model
                labels = _labels(model=served.name, version=served.version, runtime=served.runtime,
                                 device=served.device, fallback=str(served.fallback).lower())
                lines.append(f"edgeml_model_info{labels} 1")
            lines += fallback_lines(registry)
            batched = [lm for lm in registry.models() if lm.batcher is not None]
            for metric, what, attr in (("edgeml_batches_total", "Model runs made by the micro-batcher.", "batches"),
                                       ("edgeml_batch_rows_total", "Rows in those runs.", "rows")):
                lines += _family(metric, "counter", what)
                for lm in batched:
                    lines.append(f"{metric}{_labels(model=lm.name, version=lm.version)} {getattr(lm.batcher, attr)}")
        return "\n".join(lines) + "\n"


def fallback_lines(registry: ModelRegistry) -> list[str]:
    """One sample per model that runs on the CPU instead of the accelerator its bundle prefers, with why:
    an operator alerting on ``edgeml_model_info{fallback="true"}`` needs the reason next to it."""
    lines = _family("edgeml_model_fallback_info", "gauge",
                    "Models on the CPU instead of their preferred device, and why.")
    for lm in registry.models():
        selection = lm.model.selection
        if selection.fallback:
            labels = _labels(model=lm.name, version=lm.version, device=lm.model.device,
                             preferred=selection.preferred[0], reason=selection.fallback_reason or "")
            lines.append(f"edgeml_model_fallback_info{labels} 1")
    return lines
