"""Reference statistics: what the model's inputs and outputs look like over the calibration data.

They go into the bundle manifest as ``reference_stats``; the fleet later compares live telemetry with
them (population stability index, PSI) to detect drift. The schema, exactly::

    {
      "schema": 1,
      "samples": <int: number of calibration samples the statistics were computed over>,
      "bins": <int: histogram bins, B>,
      "inputs":  {<tensor name>: <TensorStats>, ...},
      "outputs": {<tensor name>: <TensorStats>, ...}        # the FP32 reference model's outputs
    }
    TensorStats = {
      "dtype": <str>, "count": <int: number of values>,
      "mean": <float>, "std": <float>, "min": <float>, "max": <float>,
      "histogram": {"edges": [B + 1 floats, increasing], "counts": [B ints]},
      "class_distribution": {"classes": <int C>, "counts": [C ints]}   # only for classifier outputs
    }

Histogram edges are ``linspace(min, max, B + 1)`` over all values of the tensor (widened by 0.5 on
both sides when min == max); bins are half-open ``[e_i, e_i+1)`` except the last, which is closed.
Live values below the first edge count in the first bin and above the last edge in the last bin,
so the fleet computes PSI over exactly these B bins. Classifier outputs are float ``[N, C]`` with
C > 1 (class = arg-max per sample) or integer ``[N]`` labels (class = the value, C = max + 1);
``counts[c]`` is how many calibration samples the reference model put in class ``c``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgeml.arrays import Array
from edgeml.jsontypes import JSONDict

SCHEMA_VERSION = 1
DEFAULT_BINS = 20


def histogram(values: Array, bins: int = DEFAULT_BINS) -> dict[str, list[float] | list[int]]:
    v = values.astype(np.float64).ravel()
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(v, lo, hi), bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def class_distribution(value: Array) -> JSONDict | None:
    if value.dtype.kind == "f" and value.ndim == 2 and value.shape[1] > 1:
        classes = int(value.shape[1])
        counts = np.bincount(value.argmax(1), minlength=classes)
    elif value.dtype.kind in "iu" and value.ndim == 1 and value.size and value.min() >= 0:
        classes = int(value.max()) + 1
        counts = np.bincount(value.astype(np.int64), minlength=classes)
    else:
        return None
    return {"classes": classes, "counts": [int(c) for c in counts]}


def tensor_stats(value: Array, bins: int = DEFAULT_BINS, *, is_output: bool = False) -> JSONDict:
    v = np.asarray(value)
    numeric = v.astype(np.float64) if v.dtype.kind in "fiub" else np.zeros(0)
    stats: JSONDict = {
        "dtype": str(v.dtype), "count": int(numeric.size),
        "mean": float(numeric.mean()) if numeric.size else 0.0,
        "std": float(numeric.std()) if numeric.size else 0.0,
        "min": float(numeric.min()) if numeric.size else 0.0,
        "max": float(numeric.max()) if numeric.size else 0.0,
        "histogram": histogram(numeric, bins),
    }
    if is_output:
        dist = class_distribution(v)
        if dist is not None:
            stats["class_distribution"] = dist
    return stats


def reference_stats(inputs: Mapping[str, Array], outputs: Mapping[str, Array], samples: int,
                    bins: int = DEFAULT_BINS) -> JSONDict:
    """``inputs``/``outputs``: every sample concatenated along the first axis, per tensor."""
    return {
        "schema": SCHEMA_VERSION, "samples": int(samples), "bins": bins,
        "inputs": {n: tensor_stats(v, bins) for n, v in inputs.items()},
        "outputs": {n: tensor_stats(v, bins, is_output=True) for n, v in outputs.items()},
    }
