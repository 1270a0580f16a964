"""Real inputs for the TFLite tests, from images shipped in scikit-image (no download).

- ``face_inputs``: square (128x128 by default) RGB crops around the astronaut's face (and shifted views),
  scaled to [-1, 1]
  as MediaPipe's face detector expects, NHWC.
- ``text_line_inputs``: 48x192 crops of scikit-image's ``text`` image, upright and rotated 180 degrees,
  normalized like PP-OCR's direction classifier ((x/255 - 0.5) / 0.5), NCHW.
- ``mediapipe_model``: any ``.tflite`` file in the mediapipe wheel that real_models.py already caches.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tests.support.real_models import CACHE, MODELS, _wheel


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from skimage.transform import resize

    return np.asarray(resize(img, (h, w), anti_aliasing=True, preserve_range=True), dtype=np.float32)


def face_inputs(n: int, size: int = 128) -> np.ndarray:
    from skimage import data

    img = data.astronaut().astype(np.float32)
    out = []
    for i in range(n):
        dy, dx, side = (i * 7) % 40, (i * 11) % 40, 200 + (i * 13) % 80
        crop = img[20 + dy:20 + dy + side, 130 + dx:130 + dx + side]
        out.append(_resize(crop, size, size) / 127.5 - 1.0)
    return np.stack(out).astype(np.float32)


def text_line_inputs(n: int) -> np.ndarray:
    from skimage import data

    img = data.text().astype(np.float32)          # 172 x 448 grayscale, dark text on light paper
    out = []
    for i in range(n):
        y, x = (i * 23) % (172 - 60), (i * 37) % (448 - 240)
        crop = _resize(img[y:y + 60, x:x + 240], 48, 192)
        if i % 2:
            crop = crop[::-1, ::-1]
        rgb = np.repeat(crop[None], 3, axis=0)
        out.append((rgb / 255.0 - 0.5) / 0.5)
    return np.stack(out).astype(np.float32)


def mediapipe_model(filename: str) -> Path:
    """A .tflite from the same mediapipe wheel real_models.py uses (e.g. face_landmark_with_attention)."""
    requirement = MODELS["face-detection"][0]
    out = CACHE / "models" / "mediapipe-extra" / filename
    if out.exists():
        return out
    with zipfile.ZipFile(_wheel(requirement)) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/" + filename))
        data = zf.read(member)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out
