"""Where TensorRT engines are cached on a device.

Engines are not portable: one built for a GPU with another compute capability, or by another TensorRT
version, fails to load or silently runs slow. The cache key therefore covers all three of (model
sha256, GPU compute capability, TensorRT version), and a change in any of them builds a new engine
rather than reusing a stale one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_SAFE = re.compile(r"[^0-9A-Za-z._-]+")


def tensorrt_cache_key(model_sha256: str, compute_capability: str | None, tensorrt_version: str | None) -> str:
    """A short directory name for one (model, GPU, TensorRT) combination.

    Readable prefix (capability and version, sanitised) plus a hash of all three parts so that two
    models never share a directory even if the readable part is truncated.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
        raise ValueError(f"model_sha256 must be 64 lowercase hex digits, not {model_sha256!r}")
    cc = _SAFE.sub("_", compute_capability or "nocc")
    trt = _SAFE.sub("_", tensorrt_version or "notrt")
    digest = hashlib.sha256(f"{model_sha256}|{cc}|{trt}".encode()).hexdigest()[:16]
    return f"sm{cc.replace('.', '')}-trt{trt}-{model_sha256[:12]}-{digest}"


def tensorrt_cache_dir(root: Path, model_sha256: str, compute_capability: str | None,
                       tensorrt_version: str | None) -> Path:
    return Path(root) / "tensorrt" / tensorrt_cache_key(model_sha256, compute_capability, tensorrt_version)
