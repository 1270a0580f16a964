#!/usr/bin/env python3
"""What agent-kept state, text input and the Open Inference Protocol cost per request, in process.

Runs ``Api.handle`` (decode -> sessions/tokenizer -> model -> encode, no sockets) on tiny generated
models and prints one table of p50/p90 microseconds per request:

  vad explicit      the streaming model, client passes the state (JSON), gets it back
  vad session       the same frames with X-Session-Id: the agent keeps the state
  vad framed x4     one post of 4 frames of PCM in a session (per request, i.e. per 4 frames)
  minilm text       {"text": [2 sentences]} through all-MiniLM-L6-v2's tokenizer
  minilm ids        the same tokens posted as arrays
  mlp v1 json       the agent's own API, a [1, 4] float input
  mlp v2 json       the Open Inference Protocol, JSON data
  mlp v2 binary     the Open Inference Protocol, binary tensor data

Usage: ``python scripts/bench_streaming.py [--quick]`` (quick: fewer requests; numbers are noisy on a
shared machine: compare rows of one run, not runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from edgeml.bundle import SigningKey, TrustStore  # noqa: E402
from edgeml.bundle.pack import state_entry, tokenizer_entry  # noqa: E402
from edgeml.inference import load  # noqa: E402
from edgeml.runtimes import open_model  # noqa: E402
from edgeml.runtimes.selection import SelectionPolicy  # noqa: E402
from edgeml_agent.api import Api, Request  # noqa: E402
from edgeml_agent.metrics import Metrics  # noqa: E402
from edgeml_agent.registry import LoadedModel, ModelRegistry  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.stream_models import FRAME, minilm_tokenizer, tiny_recurrent, tiny_text_encoder  # noqa: E402
from tests.support.tiny_models import tiny_mlp  # noqa: E402


def _registry(tmp: Path) -> ModelRegistry:
    key = SigningKey.generate()
    rec, text = tiny_recurrent(tmp / "rec.onnx"), tiny_text_encoder(tmp / "text.onnx")
    with open_model(rec, "onnxruntime") as b:
        state = state_entry([], b.inputs, b.outputs)
    with open_model(text, "onnxruntime") as b:
        tok, tok_path = tokenizer_entry(minilm_tokenizer(), b.inputs)
    smoke = {"audio": np.ones((1, FRAME), np.float32), "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.asarray(16000, np.int64)}
    framing = {"kind": "audio_frames", "input": "audio", "frame": FRAME, "hop": FRAME}
    bundles = [make_bundle(tmp, key, rec, name="vad", extra={"state": state, "preprocess": framing},
                           smoke_inputs=smoke),
               make_bundle(tmp, key, text, name="minilm", extra={"tokenizer": tok},
                           extra_files={tok["file"]: tok_path}),
               make_bundle(tmp, key, tiny_mlp(tmp / "mlp.onnx"), name="mlp")]
    registry = ModelRegistry()
    policy = SelectionPolicy(num_threads=1)
    for path in bundles:
        model = load(path, TrustStore([key.public_key]), policy=policy)
        registry.add(model.name, LoadedModel(model))
    return registry


def _requests() -> dict[str, Callable[[int], Request]]:
    rng = np.random.default_rng(0)
    frame = rng.normal(0, 1, (1, FRAME)).astype(np.float32).tolist()
    pcm = rng.normal(0, 1, 4 * FRAME).astype(np.float32).tolist()
    zeros = np.zeros((2, 1, 128), np.float32).tolist()
    texts = ["a sentence to embed on the device", "and a second, somewhat longer sentence to embed"]
    ids = [[101, 1037, 6251, 2000, 7861, 8270, 2006, 1996, 5080, 102]]
    x = [[0.1, 0.2, 0.3, 0.4]]
    x_bin = np.asarray(x, np.float32).tobytes()
    v2_bin_head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                          "parameters": {"binary_data_size": len(x_bin)}}],
                              "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    j = {"content-type": "application/json"}

    def post(path: str, body: object, headers: dict[str, str] | None = None) -> Callable[[int], Request]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return lambda i: Request("POST", path, {**j, **(headers or {})}, data)

    return {
        "vad explicit": post("/v1/models/vad/infer", {"inputs": {"audio": frame, "sr": 16000, "state": zeros}}),
        "vad session": post("/v1/models/vad/infer", {"inputs": {"audio": frame, "sr": 16000}}, {"x-session-id": "s"}),
        "vad framed x4": post("/v1/models/vad/infer", {"inputs": {"audio": pcm, "sr": 16000}}, {"x-session-id": "f"}),
        "minilm text": post("/v1/models/minilm/infer", {"text": texts}),
        "minilm ids": post("/v1/models/minilm/infer", {"inputs": {"input_ids": ids, "attention_mask": [[1] * 10],
                                                                  "token_type_ids": [[0] * 10]}}),
        "mlp v1 json": post("/v1/models/mlp/infer", {"inputs": x}),
        "mlp v2 json": post("/v2/models/mlp/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                                 "data": [0.1, 0.2, 0.3, 0.4]}]}),
        "mlp v2 binary": post("/v2/models/mlp/infer", v2_bin_head + x_bin,
                              {"inference-header-content-length": str(len(v2_bin_head))}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 requests per row instead of 2000")
    args = parser.parse_args()
    n = 200 if args.quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        api = Api(_registry(Path(tmp)), Metrics())
        print(f"{'request':<16} {'p50 us':>9} {'p90 us':>9}   (in process, {n} requests each)")
        for label, make in _requests().items():
            times = []
            for i in range(n + 20):
                req = make(i)
                t0 = time.perf_counter()
                resp = api.handle(req)
                times.append(time.perf_counter() - t0)
                assert resp.status == 200, (label, resp.body[:300])
            us = np.asarray(times[20:]) * 1e6
            print(f"{label:<16} {np.percentile(us, 50):>9.0f} {np.percentile(us, 90):>9.0f}")


if __name__ == "__main__":
    main()
