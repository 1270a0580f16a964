"""Micro-batching: at its seam with a recording run function, and in a running agent with a model that
reports the batch size it ran with (so the test sees merging from inside the model, not from a counter)."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeml.bundle import SigningKey, TensorSpec
from edgeml.errors import ConfigError
from edgeml_agent.batching import MicroBatcher, check_batchable
from tests.agent.agent_process import AgentProcess, install, write_config
from tests.support.bundles import make_bundle
from tests.support.services import free_port


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


# -- in a running agent ------------------------------------------------------------------------------------

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def batch_reporting_mlp(path: Path) -> Path:
    """x [N,4] -> y = x @ W [N,3], and n [N,1]: every row holds N, the batch size of the run it was in."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Mul", ["x", "zero"], ["zeros"]),            # [N,4] zeros
        helper.make_node("Add", ["zeros", "one"], ["ones"]),          # [N,4] ones
        helper.make_node("ReduceSum", ["ones", "axis0"], ["count"], keepdims=1),   # [1,4], each = N
        helper.make_node("Add", ["zeros", "count"], ["counts"]),      # [N,4], each = N
        helper.make_node("ReduceMax", ["counts", "axis1"], ["n"], keepdims=1),     # [N,1]
    ]
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.float32(0), "zero"),
             numpy_helper.from_array(np.float32(1), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, "batch_reporting_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("n", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    checker.check_model(model)
    save(model, str(path))
    return path


def batch_counters(url: str) -> tuple[int, int]:
    text = httpx.get(url + "/metrics", timeout=30).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    labels = '{model="counter",version="1.0.0"}'
    return int(lines["edgeml_batches_total" + labels]), int(lines["edgeml_batch_rows_total" + labels])


@pytest.mark.slow
def test_the_running_agent_merges_concurrent_requests_and_routes_each_answer_back(tmp_path):
    """Given a model with max_batch_size 8 and a wide wait window, when 8 one-row requests arrive together,
    then the model runs fewer times than there were requests, with batches of more than one row, and each
    caller gets exactly its own row's answer."""
    key = SigningKey.generate()
    (tmp_path / "builder.pub").write_bytes(key.public_pem())
    bundle = make_bundle(tmp_path, key, batch_reporting_mlp(tmp_path / "counter.onnx"), name="counter")
    port = free_port()
    # A 2 s window: the worker holds the first request until 8 rows are there (it runs at once then),
    # so merging does not depend on how fast this loaded machine delivers the requests.
    config = write_config(tmp_path / "agent.toml", tmp_path / "data", tmp_path / "builder.pub", port,
                          extra="[runtime]\nnum_threads = 1",
                          models={"counter": {"max_batch_size": 8, "max_wait_ms": 2000}})
    install(config, bundle)
    rows = [np.full((1, 4), i + 1, np.float32) for i in range(8)]
    start = threading.Barrier(len(rows))

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        buf = io.BytesIO()
        np.save(buf, x)
        start.wait()
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/models/counter/infer", content=buf.getvalue(),
                          headers={"Content-Type": "application/x-npy", "Accept": "application/x-npz"}, timeout=60)
        assert resp.status_code == 200, resp.text
        with np.load(io.BytesIO(resp.content)) as f:
            return {k: f[k] for k in f.files}

    with AgentProcess(config, port, tmp_path / "agent.log") as agent:
        before = batch_counters(agent.url)
        with ThreadPoolExecutor(len(rows)) as pool:
            answers = list(pool.map(infer, rows))
        after = batch_counters(agent.url)

    for x, answer in zip(rows, answers, strict=True):   # each caller got its own row back
        assert answer["y"].shape == (1, 3)
        np.testing.assert_allclose(answer["y"], x @ W, rtol=1e-6)
    sizes = [int(a["n"][0, 0]) for a in answers]      # the batch size each request ran in, seen by the model
    runs = sum(Fraction(1, n) for n in sizes)         # a run of n one-row requests shows n in n answers
    assert max(sizes) > 1 and runs < len(rows), sizes
    assert (after[0] - before[0], after[1] - before[1]) == (runs, len(rows))   # /metrics agrees with the model
