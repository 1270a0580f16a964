"""Drift: how far live inputs/outputs are from the bundle's ``reference_stats``.

The agent keeps a :class:`RunningSummary` per tensor, binned on the *reference* histogram edges
(values outside them fall in the first/last bin, exactly as the reference was binned — see
:mod:`edgeml.compiler.stats`), so the fleet can compare like with like. The fleet computes the
population stability index (PSI) per tensor and for classifier outputs also over the class
distribution; a model version's drift score is the largest of them. Rule of thumb used by the gates:
PSI < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_BINS = 20


def psi(reference_counts: Sequence[float] | np.ndarray, live_counts: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (0 = identical).

    Counts get additive (Jeffreys, +0.5) smoothing: a bin that happened to be empty in a small
    calibration set must not turn a handful of live values into an "infinite" shift.
    """
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    if ref.shape != live.shape or ref.sum() <= 0 or live.sum() <= 0:
        return 0.0
    p = (ref + 0.5) / (ref.sum() + 0.5 * ref.size)
    q = (live + 0.5) / (live.sum() + 0.5 * live.size)
    return float(np.sum((q - p) * np.log(q / p)))


class RunningSummary:
    """Cheap running statistics of one tensor: count, mean, std, min, max, fixed-bin histogram and
    (for classifier outputs) class counts. Not thread-safe: the caller serialises updates."""

    def __init__(self, reference: Mapping[str, Any] | None = None, *, classifier: bool = False) -> None:
        hist = (reference or {}).get("histogram") or {}
        edges = hist.get("edges")
        self.edges = np.asarray(edges, dtype=np.float64) if edges else None
        self.counts = np.zeros(len(edges) - 1 if edges else DEFAULT_BINS, dtype=np.int64)
        classes = ((reference or {}).get("class_distribution") or {}).get("classes")
        self.class_counts = np.zeros(int(classes), dtype=np.int64) if classes else None
        self.classifier = classifier or self.class_counts is not None
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.lo = float("inf")
        self.hi = float("-inf")

    def update(self, value: np.ndarray) -> None:
        v = np.asarray(value)
        if v.dtype.kind not in "fiub" or v.size == 0:
            return
        flat = v.astype(np.float64, copy=False).ravel()
        self.n += flat.size
        self.total += float(flat.sum())
        # Not np.dot: that is a BLAS call, and OpenBLAS wakes its worker threads for long vectors; they
        # then spin on the other cores for a while, taking ~10 % of the agent's inference throughput.
        self.total_sq += float(np.square(flat).sum())
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        if self.edges is not None:
            idx = np.searchsorted(self.edges, flat, side="right") - 1
            np.clip(idx, 0, len(self.counts) - 1, out=idx)
            self.counts += np.bincount(idx, minlength=len(self.counts))
        if self.classifier:
            self._update_classes(v)

    def _update_classes(self, v: np.ndarray) -> None:
        if v.dtype.kind == "f" and v.ndim >= 2 and v.shape[-1] > 1:
            labels = v.reshape(-1, v.shape[-1]).argmax(axis=1)
            size = v.shape[-1]
        elif v.dtype.kind in "iu":
            labels = v.ravel().astype(np.int64)
            labels = labels[labels >= 0]
            size = int(labels.max()) + 1 if labels.size else 0
        else:
            return
        if self.class_counts is None or len(self.class_counts) < size:
            grown = np.zeros(size, dtype=np.int64)
            if self.class_counts is not None:
                grown[: len(self.class_counts)] = self.class_counts
            self.class_counts = grown
        self.class_counts += np.bincount(labels, minlength=len(self.class_counts))[: len(self.class_counts)]

    def to_json(self) -> dict[str, Any]:
        mean = self.total / self.n if self.n else 0.0
        var = max(self.total_sq / self.n - mean * mean, 0.0) if self.n else 0.0
        out: dict[str, Any] = {
            "count": self.n, "mean": mean, "std": var ** 0.5,
            "min": self.lo if self.n else 0.0, "max": self.hi if self.n else 0.0,
        }
        if self.edges is not None:
            out["histogram"] = {"counts": [int(c) for c in self.counts]}
        if self.class_counts is not None:
            out["class_distribution"] = {"counts": [int(c) for c in self.class_counts]}
        return out


def merge_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up summaries of the same tensor (several messages or devices) into one."""
    hist: np.ndarray | None = None
    classes: np.ndarray | None = None
    n = 0
    total = 0.0
    for s in summaries:
        n += int(s.get("count", 0))
        total += float(s.get("mean", 0.0)) * int(s.get("count", 0))
        h = (s.get("histogram") or {}).get("counts")
        if h is not None:
            hist = np.asarray(h, dtype=np.int64) if hist is None or len(hist) != len(h) else hist + np.asarray(h)
        c = (s.get("class_distribution") or {}).get("counts")
        if c is not None:
            c_arr = np.asarray(c, dtype=np.int64)
            if classes is None:
                classes = c_arr
            else:
                size = max(len(classes), len(c_arr))
                classes = np.pad(classes, (0, size - len(classes))) + np.pad(c_arr, (0, size - len(c_arr)))
    out: dict[str, Any] = {"count": n, "mean": total / n if n else 0.0}
    if hist is not None:
        out["histogram"] = {"counts": hist.tolist()}
    if classes is not None:
        out["class_distribution"] = {"counts": classes.tolist()}
    return out


def drift_report(reference_stats: Mapping[str, Any], live: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """PSI per tensor (and per class distribution) of live summaries against the bundle's reference.

    ``live`` maps "inputs"/"outputs" to {tensor name: summary}. Returns {"score": max PSI or None,
    "tensors": {"inputs/x": psi, "outputs/probs:classes": psi, ...}}.
    """
    scores: dict[str, float] = {}
    for side in ("inputs", "outputs"):
        ref_side = reference_stats.get(side) or {}
        for name, summary in (live.get(side) or {}).items():
            ref = ref_side.get(name)
            if not ref:
                continue
            ref_counts = (ref.get("histogram") or {}).get("counts")
            live_counts = (summary.get("histogram") or {}).get("counts")
            if ref_counts and live_counts and sum(live_counts):
                scores[f"{side}/{name}"] = psi(ref_counts, live_counts)
            ref_classes = (ref.get("class_distribution") or {}).get("counts")
            live_classes = (summary.get("class_distribution") or {}).get("counts")
            if ref_classes and live_classes and sum(live_classes):
                size = max(len(ref_classes), len(live_classes))
                scores[f"{side}/{name}:classes"] = psi(np.pad(ref_classes, (0, size - len(ref_classes))),
                                                       np.pad(live_classes, (0, size - len(live_classes))))
    return {"score": max(scores.values()) if scores else None, "tensors": scores}
