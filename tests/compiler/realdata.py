"""Real inputs for the real models, from data shipped in scikit-image / scikit-learn wheels (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def text_line_crops(count: int, height: int = 48, width: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Crops of scikit-image's ``text`` photo, prepared like PP-OCR's classifier input (RGB, /255,
    mean 0.5, std 0.5, NCHW). Every other crop is turned 180 degrees; labels: 0 upright, 1 turned."""
    from PIL import Image
    from skimage import data

    page = data.text()
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for i in range(count):
        h = int(rng.integers(28, 60))
        w = int(rng.integers(120, 300))
        y = int(rng.integers(0, page.shape[0] - h))
        x = int(rng.integers(0, page.shape[1] - w))
        img = Image.fromarray(page[y:y + h, x:x + w]).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        turned = i % 2 == 1
        if turned:
            arr = arr[::-1, ::-1]
        crops.append(((arr - 0.5) / 0.5).transpose(2, 0, 1))
        labels.append(int(turned))
    return np.stack(crops).astype(np.float32), np.asarray(labels, dtype=np.int64)


def text_scenes(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Square crops of scikit-image's ``text`` photo (printed text on a sign), resized to ``size`` and
    ImageNet-normalised NCHW: inputs on which a text detector's probability map is not empty."""
    from PIL import Image
    from skimage import data

    page = data.text()
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    out = []
    for _ in range(count):
        side = int(rng.integers(100, page.shape[0]))
        y = int(rng.integers(0, page.shape[0] - side + 1))
        x = int(rng.integers(0, page.shape[1] - side + 1))
        crop = Image.fromarray(page[y:y + side, x:x + side]).convert("RGB")
        img = crop.resize((size, size), Image.Resampling.BILINEAR)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
        out.append(arr.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def scene_crops(count: int, size: int, seed: int = 0) -> np.ndarray:
    """RGB crops of scikit-image's photos (astronaut, coffee, chelsea, rocket), ImageNet-normalised NCHW."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2])))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        img = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
        out.append(arr.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def digits_classifier(path: Path, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train a small MLP on scikit-learn's digits (pixels scaled to [0, 1] outside the model) and export
    it with skl2onnx: outputs ``label`` int64 [N] and ``probabilities`` float [N, 10]; MatMul layers, so
    INT8 really quantizes something. Returns (model, x_calibration, x_test, y_test, y_calibration)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    # one BLAS thread: on a shared 2-core machine more threads make this tiny fit 40x slower
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((32,), max_iter=200, random_state=seed).fit(x_train, y_train)
    onx = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path, x_train[:200], x_test, y_test.astype(np.int64), y_train[:200].astype(np.int64)
