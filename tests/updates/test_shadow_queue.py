"""The shadow never makes a live request wait: the previous model runs in the shadow's own thread, fed
by a bounded queue that drops (and counts) samples when it is full."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import pytest

from edgeml.arrays import Array
from edgeml.inference import Model
from edgeml_agent.registry import Observation
from edgeml_agent.updates.health import HealthWatch, Shadow

pytestmark = pytest.mark.timeout(20)   # a request that waits on the blocked model hangs: fail, don't hang

X = {"x": np.ones((1, 4), dtype=np.float32)}
Y = {"y": np.array([[0.1, 0.9]], dtype=np.float32)}


class BlockedModel:
    """A previous version whose every run waits until the test releases it: the slowest model there is."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.runs = 0

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self.started.set()
        self.release.wait(30)
        self.runs += 1
        return dict(Y)

    def close(self) -> None:
        pass


def _observation() -> Observation:
    return Observation("m", "2.0.0", 0.001, 200, inputs=X, outputs=Y)


def test_a_blocked_shadow_model_neither_delays_live_requests_nor_loses_count_of_what_it_dropped() -> None:
    slow = BlockedModel()
    watch = HealthWatch()
    shadow = Shadow(cast(Model, slow), "m", "2.0.0", fraction=1.0)
    watch.shadow = shadow
    try:
        watch.observe(_observation())
        assert slow.started.wait(10)   # the shadow thread is stuck in the previous model's first run
        requests = Shadow.QUEUE_SIZE + 50
        for _ in range(requests):   # what a request thread does after answering
            watch.observe(_observation())
        # every one returned while the shadow model was still blocked (a request that waited on it would
        # still be waiting: the model runs only once released): none waited for it
        assert slow.runs == 0 and not slow.release.is_set()
        assert shadow.compared == 0 and shadow.dropped == requests - Shadow.QUEUE_SIZE
        assert watch.health("m", "2.0.0").requests == requests + 1   # the live figures miss nothing
        # when the previous model is free again, the shadow catches up on what it queued
        slow.release.set()
        deadline = time.monotonic() + 10
        while shadow.compared < Shadow.QUEUE_SIZE + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shadow.compared == Shadow.QUEUE_SIZE + 1 and shadow.agreement == 1.0
    finally:
        slow.release.set()
        shadow.stop()


def test_only_the_candidate_versions_successful_requests_are_offered() -> None:
    slow = BlockedModel()
    slow.release.set()
    watch = HealthWatch()
    shadow = Shadow(cast(Model, slow), "m", "2.0.0", fraction=1.0)
    watch.shadow = shadow
    try:
        failed: Any = Observation("m", "2.0.0", 0.001, 500, error="boom", inputs=X, outputs=None)
        for obs in (Observation("m", "1.0.0", 0.001, 200, inputs=X, outputs=Y), failed,
                    Observation("other", "2.0.0", 0.001, 200, inputs=X, outputs=Y)):
            watch.observe(obs)
        time.sleep(0.3)
        assert shadow.compared == 0 and shadow.dropped == 0
    finally:
        shadow.stop()
