"""The capture decision, taken in the request thread, and the budget, kept by the writer thread.

:func:`decide` must stay cheap: it runs after every served request of a model whose policy is enabled.
It reads the request's outputs only for the low-confidence trigger (one ``max`` over a small score
vector) and a number the writer thread refreshes for the drift trigger; it never touches the disk and
never takes a lock. Which trigger wins when several fire: the first in :data:`ORDER` (the rarest and most
informative first), so a sample is captured once, under one trigger.
"""

from __future__ import annotations

import collections
import functools
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from edgeml.arrays import Array
from edgeml.capture import CaptureBudget, CapturePolicy
from edgeml.jsontypes import JSON

ORDER = ("shadow_disagreement", "drift", "low_confidence", "random")
HOUR_S = 3600.0
DAY_S = 86400.0


class Decision(NamedTuple):   # a tuple: made in the request thread
    trigger: str
    figures: dict[str, JSON]   # never changed once made (the random trigger's one is shared)


@functools.lru_cache(maxsize=64)
def _random_decision(rate: float) -> Decision:
    return Decision("random", {"rate": rate})


def top1_probability(scores: Array) -> float | None:
    """The top-1 probability of one sample's scores; logits are turned into probabilities first."""
    v = np.asarray(scores)
    if v.dtype.kind != "f" or v.size < 2:
        return None
    row = v.reshape(-1, v.shape[-1])[0].astype(np.float64, copy=False)
    total = float(row.sum())
    if float(row.min()) >= 0.0 and abs(total - 1.0) < 1e-3:
        return float(row.max())
    shifted = np.exp(row - row.max())     # logits: softmax, written so that large values cannot overflow
    return float(1.0 / shifted.sum())


def decide(policy: CapturePolicy, outputs: Mapping[str, Array] | None, drift: Mapping[str, float] | None,
           rand: Callable[[], float] = random.random) -> Decision | None:
    """Which trigger (if any) captures this request. ``drift`` is the model version's latest PSI per input."""
    if policy.drift_threshold is not None and drift:
        if policy.drift_tensor is not None:
            score = drift.get(policy.drift_tensor)
            tensor = policy.drift_tensor
        else:
            tensor, score = max(drift.items(), key=lambda kv: kv[1])
        if score is not None and score > policy.drift_threshold:
            return Decision("drift", {"drift": round(score, 4), "tensor": tensor,
                                      "threshold": policy.drift_threshold})
    if policy.confidence_threshold is not None and outputs:
        name = policy.confidence_output or next(iter(outputs))
        value = outputs.get(name)
        p = top1_probability(value) if value is not None else None
        if p is not None and p < policy.confidence_threshold:
            return Decision("low_confidence", {"probability": round(p, 4), "output": name,
                                               "threshold": policy.confidence_threshold})
    if policy.random_rate > 0 and rand() < policy.random_rate:
        return _random_decision(policy.random_rate)
    return None


class Budget:
    """Samples per hour and bytes per day over sliding windows (one per model), kept by the writer thread.

    ``closed_until`` is what the request threads read (no lock): while the budget is spent, they stop
    deciding at all, so a spent budget costs them one clock read.
    """

    def __init__(self, limits: CaptureBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._samples: collections.deque[float] = collections.deque()
        self._bytes: collections.deque[tuple[float, int]] = collections.deque()
        self._bytes_total = 0
        self.closed_until = 0.0
        self.refused = 0

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0] <= now - HOUR_S:
            self._samples.popleft()
        while self._bytes and self._bytes[0][0] <= now - DAY_S:
            self._bytes_total -= self._bytes.popleft()[1]

    def allows(self) -> bool:
        """True if one more sample fits the hourly count (bytes are checked once its size is known)."""
        now = self._clock()
        self._expire(now)
        if len(self._samples) >= self.limits.samples_per_hour or self._bytes_total >= self.limits.bytes_per_day:
            self.refused += 1
            self._close(now)
            return False
        return True

    def allows_bytes(self, size: int) -> bool:
        now = self._clock()
        self._expire(now)
        if self._bytes_total + size > self.limits.bytes_per_day:
            self.refused += 1
            return False
        return True

    def spend(self, size: int) -> None:
        now = self._clock()
        self._samples.append(now)
        self._bytes.append((now, size))
        self._bytes_total += size
        if len(self._samples) >= self.limits.samples_per_hour or self._bytes_total >= self.limits.bytes_per_day:
            self._close(now)

    def _close(self, now: float) -> None:
        """Tell the request threads when a sample may fit again: when the oldest sample (or byte) that
        fills a window leaves it; both windows must have room."""
        reopen = [now]
        if len(self._samples) >= self.limits.samples_per_hour:
            reopen.append(self._samples[0] + HOUR_S if self._samples else math.inf)
        if self._bytes_total >= self.limits.bytes_per_day:
            reopen.append(self._bytes[0][0] + DAY_S if self._bytes else math.inf)
        self.closed_until = max(reopen)
