"""Micro-batching, tested at its seam with a recording run function (the process tests use a real model)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgeml.bundle import TensorSpec
from edgeml.errors import ConfigError
from edgeml_agent.batching import MicroBatcher, check_batchable


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, feeds):
        with self.lock:
            self.calls.append(feeds["x"].shape[0])
        time.sleep(self.delay)
        return {"y": feeds["x"] * 2, "s": feeds["x"].sum(axis=1)}


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    run = Recorder(delay=0.01)
    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.05)
    try:
        rows = [np.full((1, 3), i, np.float32) for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda x: batcher.submit({"x": x}), rows))
    finally:
        batcher.close()
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], rows[i] * 2)
        assert out["s"].tolist() == [3.0 * i]
    assert sum(run.calls) == 16 and max(run.calls) <= 8 and len(run.calls) < 16
    assert batcher.rows == 16 and batcher.batches == len(run.calls)


def test_requests_with_different_shapes_run_in_separate_groups():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.05)
    try:
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(batcher.submit, {"x": np.ones((2, n), np.float32)}) for n in (3, 3, 5, 5)]
            outs = [f.result() for f in futs]
    finally:
        batcher.close()
    assert [o["y"].shape for o in outs] == [(2, 3), (2, 3), (2, 5), (2, 5)]


def test_a_failing_batch_fails_every_request_in_it_and_the_batcher_goes_on():
    calls = []

    def run(feeds):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("runtime exploded")
        return {"y": feeds["x"]}

    batcher = MicroBatcher(run, max_batch_size=4, max_wait_s=0.05)
    try:
        with ThreadPoolExecutor(2) as pool:
            futs = [pool.submit(batcher.submit, {"x": np.ones((1, 2), np.float32)}) for _ in range(2)]
            errors = [f.exception() for f in futs]
        assert all(isinstance(e, RuntimeError) for e in errors)
        assert batcher.submit({"x": np.zeros((1, 2), np.float32)})["y"].shape == (1, 2)
    finally:
        batcher.close()


def test_close_finishes_queued_requests():
    batcher = MicroBatcher(Recorder(delay=0.02), max_batch_size=2, max_wait_s=0.0)
    with ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(batcher.submit, {"x": np.ones((1, 1), np.float32)}) for _ in range(6)]
        time.sleep(0.01)
        batcher.close()
        assert all(f.result()["y"].shape == (1, 1) for f in futs)


def test_only_models_with_a_batch_dimension_can_batch():
    dyn = [TensorSpec("x", "float32", ("N", 4))]
    check_batchable("m", dyn, [TensorSpec("y", "float32", ("N", 3))])
    with pytest.raises(ConfigError, match=r"remove models\.m\.max_batch_size"):
        check_batchable("m", [TensorSpec("x", "float32", (1, 4))], dyn)
