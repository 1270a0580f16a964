"""Pack a model file into a signed bundle for tests, without the compiler.

The manifest is filled from the model itself (inputs/outputs as the runtime reports them), the target
profile (``get_target(id).to_json()``) and a smoke sample computed by running the model once.
Other test suites (fleet, OTA) reuse :func:`make_bundle`; keep its signature small.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle import SigningKey, pack_bundle
from edgeml.runtimes import open_model
from edgeml.targets import get_target

_RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert", ".xml": "openvino"}


def sample_inputs(specs: list[Any], seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Random inputs matching tensor specs; dynamic dims become ``batch`` (first) or 16."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape = [d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 16) for i, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return out


def make_bundle(
    out: Path,
    key: SigningKey,
    model: Path,
    *,
    name: str = "m",
    version: str = "1.0.0",
    target: str = "x86-cpu",
    runtime: str | None = None,
    precision: str = "fp32",
    extra: Mapping[str, Any] | None = None,
    smoke_offset: float = 0.0,
    extra_files: Mapping[str, Path] | None = None,
    smoke_inputs: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a signed bundle for ``model`` to ``out`` (a file path or a directory) and return its path.

    ``runtime`` defaults from the model's suffix; an OpenVINO ``.xml`` takes its ``.bin`` along.
    ``extra`` adds or overrides manifest keys (e.g. ``runtime_preferences``, ``reference_stats``).
    ``smoke_offset`` shifts the expected smoke outputs away from what the model computes (a bundle whose
    smoke test fails on the device). ``extra_files`` ships more files (path in the bundle -> file);
    ``smoke_inputs`` replaces the random smoke sample (models whose dynamic dims must agree).
    """
    model = Path(model)
    runtime = runtime or _RUNTIME_BY_SUFFIX.get(model.suffix)
    if runtime is None:
        raise ValueError(f"cannot tell the runtime of {model}; pass runtime=")
    out = Path(out)
    if out.is_dir():
        out = out / f"{name}-{version}.edgepkg"
    backend = open_model(model, runtime)
    try:
        feeds = dict(smoke_inputs) if smoke_inputs is not None else sample_inputs(backend.inputs)
        expected = {k: v + np.asarray(smoke_offset, dtype=v.dtype) if smoke_offset else v
                    for k, v in backend.run(feeds).items()}
        inputs = [s.to_json() for s in backend.inputs]
        outputs = [s.to_json() for s in backend.outputs]
    finally:
        backend.close()
    files: dict[str, Path] = {f"model/{model.name}": model, **dict(extra_files or {})}
    if model.suffix == ".xml":
        files[f"model/{model.with_suffix('.bin').name}"] = model.with_suffix(".bin")
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "input.npz", **feeds)  # type: ignore[arg-type]
        np.savez(Path(tmp) / "expected.npz", **expected)  # type: ignore[arg-type]
        files["smoke/input.npz"] = Path(tmp) / "input.npz"
        files["smoke/expected.npz"] = Path(tmp) / "expected.npz"
        manifest: dict[str, Any] = {
            "name": name,
            "version": version,
            "target": get_target(target).to_json(),
            "runtime": runtime,
            "precision": precision,
            "model": f"model/{model.name}",
            "inputs": inputs,
            "outputs": outputs,
            "smoke": {"input": "smoke/input.npz", "expected": "smoke/expected.npz", "rtol": 1e-3, "atol": 1e-4},
            **dict(extra or {}),
        }
        pack_bundle(out, manifest, files, key)
    return out
