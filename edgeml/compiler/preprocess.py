"""How an image becomes a model input (:class:`Preprocess`): declared by the user, applied to image
folders of calibration/evaluation data, and written into the bundle manifest for the device. Cheap to
import (numpy and PIL load when an image is read): the build request validates it up front."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeml.arrays import Array
from edgeml.errors import ConfigError
from edgeml.jsontypes import JSON, JSONDict, as_float, as_list


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: resize to ``size`` (width, height), colour order, then
    ``(pixel * scale - mean) / std`` per channel, then ``layout``. Written into the bundle manifest."""

    size: tuple[int, int] | None = None
    layout: str = "NCHW"
    color: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"preprocess layout '{self.layout}' must be NCHW or NHWC")
        if self.color not in ("RGB", "BGR", "GRAY"):
            raise ConfigError(f"preprocess color '{self.color}' must be RGB, BGR or GRAY")
        if any(s == 0 for s in self.std):
            raise ConfigError("preprocess std must not contain 0")

    def to_json(self) -> JSONDict:
        return {"size": list(self.size) if self.size else None, "layout": self.layout, "color": self.color,
                "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> Preprocess:
        allowed = {"size", "layout", "color", "scale", "mean", "std"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"preprocess key '{unknown[0]}' is unknown (allowed: {', '.join(sorted(allowed))})")
        try:
            size = [int(as_float(v)) for v in as_list(data["size"])] if data.get("size") else None
            return cls(
                size=(size[0], size[1]) if size else None,
                layout=str(data.get("layout", "NCHW")), color=str(data.get("color", "RGB")),
                scale=as_float(data.get("scale", 1 / 255)),
                mean=tuple(as_float(v) for v in as_list(data.get("mean", [0.0, 0.0, 0.0]))),
                std=tuple(as_float(v) for v in as_list(data.get("std", [1.0, 1.0, 1.0]))),
            )
        except (TypeError, IndexError) as exc:
            example = '{"size": [224, 224], "mean": [0.485, 0.456, 0.406]}'
            raise ConfigError(f"preprocess: {exc} (e.g. {example})") from exc

    def apply(self, path: Path, dtype: str = "float32") -> Array:
        """One image file -> an array of shape [1, C, H, W] (NCHW) or [1, H, W, C] (NHWC)."""
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as opened:
                img = opened.convert("L" if self.color == "GRAY" else "RGB")
                if self.size:
                    img = img.resize(self.size, Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)
        except OSError as exc:
            raise ConfigError(f"cannot read image {path}: {exc}") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.color == "BGR":
            arr = arr[:, :, ::-1]
        channels = arr.shape[2]
        mean = np.asarray(self.mean[:channels], dtype=np.float32)
        std = np.asarray(self.std[:channels], dtype=np.float32)
        arr = (arr * np.float32(self.scale) - mean) / std
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr[None]).astype(dtype)
