"""The demo's inputs: the real PP-OCR classifier, crops of sample photos, and v3's broken network."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

MODEL_WHEEL = "rapidocr-onnxruntime==1.4.4"
MODEL_MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
MODEL_NAME = "ppocr-cls"
INPUT_SHAPE = (3, 48, 192)  # the text-line crops PP-OCR's classifier was trained on


class InputError(RuntimeError):
    """The model could not be fetched."""


def say(text: str) -> None:
    print(text, flush=True)


def fetch_model(cache: Path) -> Path:
    """The PP-OCR classifier from its PyPI wheel (downloaded once; later runs are offline)."""
    out = cache / "models" / MODEL_NAME / Path(MODEL_MEMBER).name
    if out.exists():
        return out
    wheels = cache / "wheels"
    found = sorted(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl")) if wheels.is_dir() else []
    if not found:
        say(f"    pip download {MODEL_WHEEL} (once, into {wheels})")
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                        "-d", str(wheels), MODEL_WHEEL], check=True)
        found = sorted(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not found:
        raise InputError(f"pip download {MODEL_WHEEL} left no wheel in {wheels}")
    with zipfile.ZipFile(found[0]) as zf:
        data = zf.read(MODEL_MEMBER)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".part").write_bytes(data)
    out.with_suffix(".part").replace(out)
    return out


def text_crops(count: int, seed: int) -> np.ndarray:
    """``count`` crops of scikit-image's sample photos, resized and normalised as PP-OCR expects."""
    from skimage import data
    from skimage.transform import resize

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(),
              data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        y, x = int(rng.integers(0, h - 96)), int(rng.integers(0, w - 384))
        crop = resize(photo[y:y + 96, x:x + 384], INPUT_SHAPE[1:], anti_aliasing=True)
        crops.append(((crop - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32))
    return np.stack(crops)


def batch_of_one_only(model: Path, out: Path) -> Path:
    """v3's network: PP-OCR cls with its output reshaped to a fixed batch of one. It answers the smoke
    test (one sample) correctly and fails on every batched request — a bug that only live traffic shows."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(model))
    graph = m.graph
    final = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{final}_pre" if o == final else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "fixed_batch_shape"))
    graph.node.append(helper.make_node("Reshape", [f"{final}_pre", "fixed_batch_shape"], [final], name="fixed_batch"))
    # declared as a dynamic batch, like the original, so the bundle looks like any other version
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(m, str(out))
    return out


