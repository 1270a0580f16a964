"""A small PNG of a captured image input, for the dashboard's captures list (no imaging library needed).

An input is an image when it is 2-D (H, W), or 3-/4-D with 1 or 3 channels first (CHW, NCHW) or last
(HWC, NHWC), at least 8 pixels a side. Its values are scaled to 0-255 over its own range, and it is
shrunk by striding to at most ``MAX_SIDE`` pixels a side: a preview, not the data.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

MAX_SIDE = 96


def image_of(array: np.ndarray) -> np.ndarray | None:
    """(H, W) or (H, W, 3) uint8, or None when ``array`` does not look like an image."""
    a = np.asarray(array)
    while a.ndim == 4 and a.shape[0] >= 1:
        a = a[0]
    if a.ndim == 3:
        if a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
            a = np.moveaxis(a, 0, -1)
        if a.shape[2] not in (1, 3):
            return None
        if a.shape[2] == 1:
            a = a[..., 0]
    if (a.ndim != 2 and a.ndim != 3) or min(a.shape[:2]) < 8 or a.dtype.kind not in "fiub":
        return None
    step = max(1, -(-max(a.shape[:2]) // MAX_SIDE))
    a = a[::step, ::step].astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    scaled = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.nan_to_num(scaled).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    """An 8-bit greyscale or RGB PNG of ``image``."""
    height, width = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    rows = b"".join(b"\x00" + np.ascontiguousarray(row).tobytes() for row in image)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def thumbnail(sample: Path) -> bytes | None:
    """The PNG of the first image-like input of a captured sample file, or None."""
    with np.load(sample, allow_pickle=False) as npz:
        for name in npz.files:
            if name.startswith("in/"):
                image = image_of(npz[name])
                if image is not None:
                    return png(image)
    return None
