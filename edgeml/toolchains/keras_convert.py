"""Convert a Keras model (``.keras``/``.h5``) or a TensorFlow SavedModel directory to ``.tflite`` with
TensorFlow's own converter (``tf.lite.TFLiteConverter``), inside the ``tflite`` toolchain that already
holds TensorFlow 2.19 (``python keras_convert.py SOURCE OUTDIR``; edgeml is not installed there, so this
file imports only the standard library at module level).

Writes ``model.tflite``, ``example.npz`` (a random input as ``in/NAME`` under the TFLite tensor names and
the Keras/TF model's own outputs on it as ``out/NAME``, so edgeml can check the conversion) and
``export.json`` (framework, versions, options), the same layout as :mod:`torch_export`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_FILE = "model.tflite"
EXAMPLE_FILE = "example.npz"
INFO_FILE = "export.json"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("tensorflow", "keras", "tf-keras"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _saved_model(source: Path, work: Path) -> tuple[Path, Any, str]:
    """(SavedModel directory, the callable to run eagerly, what the source was)."""
    import tensorflow as tf

    if source.is_dir():
        loaded = tf.saved_model.load(str(source))
        return source, loaded.signatures["serving_default"], "TensorFlow SavedModel"
    import keras

    model = keras.models.load_model(str(source), compile=False)
    exported = work / "saved_model"
    model.export(str(exported), format="tf_saved_model", verbose=False)
    return exported, model, f"Keras {keras.__version__} model ({source.suffix})"


def _example(tflite_path: Path, eager: Any, out_dir: Path) -> bool:
    """Run one random input through the converted model's signature and the original model; save both
    under the TFLite tensor names. False when the two cannot be matched (nothing is saved then)."""
    import numpy as np
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal([int(d) if d > 0 else 1 for d in i["shape_signature"]]).astype(i["dtype"])
             for i in inputs]
    for detail, value in zip(inputs, feeds, strict=True):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    tflite_out = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    if hasattr(eager, "structured_input_signature"):        # a SavedModel signature takes keywords
        (name,) = eager.structured_input_signature[1]         # one input (convert() checks that)
        result = eager(**{name: tf.constant(feeds[0])})
    else:
        result = eager(tf.constant(feeds[0]))
    flat = list(result.values()) if isinstance(result, dict) else list(result) if isinstance(result, (list, tuple)) \
        else [result]
    eager_out = [np.asarray(t) for t in flat]
    if len(eager_out) != len(tflite_out) or any(a.shape != b.shape for a, b in
                                                zip(eager_out, tflite_out.values(), strict=True)):
        return False
    arrays = {f"in/{d['name']}": v for d, v in zip(inputs, feeds, strict=True)}
    arrays.update({f"out/{name}": a for name, a in zip(tflite_out, eager_out, strict=True)})
    np.savez(out_dir / EXAMPLE_FILE, **arrays)  # type: ignore[arg-type]
    return True


def convert(source: Path, out_dir: Path) -> dict[str, Any]:
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    saved, eager, kind = _saved_model(source, out_dir)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    (out_dir / MODEL_FILE).write_bytes(converter.convert())
    checked = len(_inputs_of(out_dir / MODEL_FILE)) == 1 and _example(out_dir / MODEL_FILE, eager, out_dir)
    info = {"framework": "tensorflow", "source_kind": kind, "exporter": "tf.lite.TFLiteConverter.from_saved_model",
            "versions": _versions(), "options": {"optimizations": []}, "example_checked": checked,
            "inputs": _inputs_of(out_dir / MODEL_FILE)}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def _inputs_of(path: Path) -> list[str]:
    import tensorflow as tf

    return [d["name"] for d in tf.lite.Interpreter(model_path=str(path)).get_input_details()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert Keras / SavedModel to TFLite (edgeml's tflite toolchain).")
    parser.add_argument("source", type=Path)
    parser.add_argument("out_dir", type=Path)
    ns = parser.parse_args(argv)
    info = convert(ns.source, ns.out_dir)
    print(json.dumps({"ok": True, "inputs": info["inputs"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
