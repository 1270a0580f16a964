"""Shared pieces of the update tests: model versions (good, slow, failing on real inputs), signed
desired states, and an in-process agent with the update component."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle import SigningKey, sha256_file
from edgeml.desired import sign_desired
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

DEVICE = "dev-test-1"


def failing_on_batches(path: Path, seed: int = 2) -> Path:
    """A model that answers a batch of one (its smoke sample) but fails on the batches live traffic
    sends: it reshapes to a fixed batch of 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    base = onnx.load(str(tiny_mlp(path.with_name("base-" + path.name), seed=seed)))
    graph = base.graph
    graph.output[0].name = "y"
    for node in graph.node:
        if "y" in node.output:
            node.output[0] = "y_pre"
    graph.initializer.append(numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "fixed_shape"))
    graph.node.append(helper.make_node("Reshape", ["y_pre", "fixed_shape"], ["y"], name="fixed_batch"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]))
    onnx.save(base, str(path))
    return path


def slow_model(path: Path, layers: int = 24, width: int = 384, seed: int = 3) -> Path:
    """Same inputs/outputs as tiny_mlp but many wide MatMuls: correct answers, much slower."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (4, width)).astype(np.float32), "w_in"))
    nodes.append(helper.make_node("MatMul", ["x", "w_in"], ["h0"]))
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, (width, width)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (width, 3)).astype(np.float32), "w_out"))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def versions(tmp: Path, key: SigningKey, *, target: str = "x86-cpu") -> dict[str, Path]:
    """Bundles of model 'm': 1.0.0 and 2.0.0 good, 3.0.0 failing on live batches, 3.1.0 slow."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    out = tmp / "bundles"
    out.mkdir(exist_ok=True)
    return {
        "1.0.0": make_bundle(out, key, tiny_mlp(src / "v1.onnx", seed=0), version="1.0.0", target=target),
        "2.0.0": make_bundle(out, key, tiny_mlp(src / "v2.onnx", seed=1), version="2.0.0", target=target),
        "3.0.0": make_bundle(out, key, failing_on_batches(src / "v3.onnx"), version="3.0.0", target=target),
        "3.1.0": make_bundle(out, key, slow_model(src / "v31.onnx"), version="3.1.0", target=target),
    }


def desired(key: SigningKey, bundle: Path, url: str, *, version: str, device: str = DEVICE, serial: int | None = None,
            expires_in: float = 3600, rollback: bool = False, probation: dict[str, Any] | None = None,
            size: int | None = None, sha256: str | None = None) -> bytes:
    now = time.time()
    return sign_desired({
        "device": device, "issued": now, "expires": now + expires_in,
        "serial": int(now * 1000) if serial is None else serial,
        "models": [{"name": "m", "version": version, "sha256": sha256 or sha256_file(bundle),
                    "size": bundle.stat().st_size if size is None else size, "url": url, "rollback": rollback}],
        "probation": probation or {"seconds": 1.0, "min_requests": 5},
        "rollout": None,
    }, key)


def write_credentials(data_dir: Path, server: str, device: str = DEVICE) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "credentials.json").write_text(json.dumps(
        {"server": server, "device_id": device, "api_token": "device-token-for-tests", "mqtt": {}}))
