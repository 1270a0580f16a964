#!/usr/bin/env python3
"""Benchmark delta updates: how small is the delta of a retrain that changes only the last layers?

A real pretrained model (PP-OCR from the rapidocr-onnxruntime wheel, see tests/support/real_models.py)
is packed as version 1.0.0 with edgeml's own packer (signed, zstd-compressed, smoke data: the real
bundle layout); version 1.1.0 is the same model with the weights of its last layers retrained (here:
perturbed with noise, every byte of them changed) — as many layers, counted back from the output, as
hold ``--head-fraction`` of the weight bytes (default 10 %) — packed the same way. Then:

  * the delta over the **uncompressed tar streams** (what edgeml makes and ships), its size against the
    full bundle, the time to make it (the fleet does this once per pair) and the time to apply it and
    check the result's sha256 (what the device does);
  * for comparison, the delta over the **compressed files** (what a naive ``zstd --patch-from a.edgepkg
    b.edgepkg`` would give): it shows why edgeml patches tar streams.

Goal: delta <= 15 % of the full bundle.

Usage: ``python scripts/bench_delta.py [--model ppocr-det|ppocr-rec|ppocr-cls] [--head-fraction 0.10] [--quick]``
(``--quick``: the small classifier only, lower zstd level). Prints one table.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edgeml.bundle import SigningKey  # noqa: E402
from edgeml.bundle.delta import DELTA_LEVEL, apply_delta, make_delta, tar_stream  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.real_models import real_model  # noqa: E402

# Static input shapes (the smoke sample needs sizes the model accepts: the detector wants multiples of 32).
SHAPES = {"ppocr-det": [1, 3, 64, 64], "ppocr-rec": [1, 3, 48, 320], "ppocr-cls": [1, 3, 48, 192]}


def fix_input_shape(src: Path, out: Path, shape: list[int]) -> Path:
    import onnx

    model = onnx.load(str(src))
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = size
    onnx.save(model, str(out))
    return out


def _weights(model) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Every float tensor of at least 16 values, by name: initializers and (paddle2onnx exports keep
    their weights there) the values of Constant nodes."""
    import onnx

    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            found.update((node.output[0], a.t) for a in node.attribute if a.name == "value")
    return {k: t for k, t in found.items()
            if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(list(t.dims) or [1])) >= 16}


def retrain_last_layers(src: Path, out: Path, fraction: float, seed: int = 7) -> tuple[int, int, int]:
    """Write ``src`` with the float weights of its last weighted nodes changed, as many of them (from the
    output backwards) as it takes to change ``fraction`` of all weight bytes; returns (layers changed,
    bytes of weights changed, bytes of weights in the model)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    weights = _weights(model)
    weighted = [n for n in model.graph.node if n.op_type != "Constant" and any(i in weights for i in n.input)]
    rng = np.random.default_rng(seed)
    total = sum(numpy_helper.to_array(t).nbytes for t in weights.values())  # type: ignore[arg-type]
    changed = layers = 0
    for node in reversed(weighted):
        if changed >= fraction * total:
            break
        layers += 1
        for name in (i for i in node.input if i in weights):
            t = weights[name]
            w = numpy_helper.to_array(t)  # type: ignore[arg-type]
            w = (w + rng.normal(0, 0.01, w.shape) * (np.abs(w).mean() + 1e-6)).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(w, t.name))  # type: ignore[attr-defined]
            changed += w.nbytes
    onnx.save(model, str(out))
    return layers, changed, total


def n_layers(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path))
    weights = _weights(model)
    return sum(1 for n in model.graph.node if n.op_type != "Constant" and any(i in weights for i in n.input))


def measure(model_key: str, fraction: float, level: int, work: Path) -> list[tuple[str, str]]:
    key = SigningKey.generate()
    src = fix_input_shape(real_model(model_key), work / f"{model_key}.onnx", SHAPES[model_key])
    v2_model = work / f"{src.stem}-retrained.onnx"
    layers, changed, total = retrain_last_layers(src, v2_model, fraction)
    out = work / "bundles"
    out.mkdir()
    old = make_bundle(out, key, src, name=model_key, version="1.0.0")
    new = make_bundle(out, key, v2_model, name=model_key, version="1.1.0")
    full = new.stat().st_size
    old_tar, new_tar = tar_stream(old), tar_stream(new)

    started = time.perf_counter()
    delta = make_delta(old_tar, new_tar, level=level)
    make_s = time.perf_counter() - started
    started = time.perf_counter()
    rebuilt = apply_delta(tar_stream(old), delta, max_result_bytes=len(new_tar))   # as the device does it
    ok = hashlib.sha256(rebuilt).hexdigest() == hashlib.sha256(new_tar).hexdigest()
    apply_s = time.perf_counter() - started
    naive = make_delta(old.read_bytes(), new.read_bytes(), level=level)
    return [
        ("model", f"{model_key} ({src.stat().st_size / 1e6:.1f} MB ONNX)"),
        ("weights changed", f"last {layers} of {n_layers(src)} weighted layers: {changed / 1e6:.2f} of "
                            f"{total / 1e6:.2f} MB ({changed / total:.1%})"),
        ("full bundle (zstd)", f"{full:,} B"),
        ("tar stream", f"{len(new_tar):,} B"),
        ("delta over tar streams", f"{len(delta):,} B"),
        ("ratio delta / full bundle", f"{len(delta) / full:.1%}  (goal <= 15 %)"),
        ("make delta (fleet, once)", f"{make_s:.2f} s at zstd level {level}"),
        ("apply + sha256 (device)", f"{apply_s * 1000:.0f} ms, result {'matches' if ok else 'DIFFERS'}"),
        ("naive delta over .edgepkg files", f"{len(naive):,} B = {len(naive) / full:.1%} of the bundle"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ppocr-det", choices=["ppocr-det", "ppocr-rec", "ppocr-cls"])
    parser.add_argument("--head-fraction", type=float, default=0.10,
                        help="retrain the last layers until this fraction of the weight bytes changed")
    parser.add_argument("--quick", action="store_true", help="the small classifier, zstd level 9")
    args = parser.parse_args()
    model, level = ("ppocr-cls", 9) if args.quick else (args.model, DELTA_LEVEL)
    with tempfile.TemporaryDirectory(prefix="edgeml-bench-delta-") as tmp:
        rows = measure(model, args.head_fraction, level, Path(tmp))
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
