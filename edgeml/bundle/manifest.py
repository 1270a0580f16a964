"""The bundle manifest (format version 1): the single source of truth about a bundle.

The manifest is a JSON object; :class:`Manifest` validates the keys every side relies on and gives
typed access to them, while ``raw`` keeps everything (fidelity, benchmark, provenance, ...) as written.
Serialisation is canonical (sorted keys, fixed separators) because the signature covers its bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeml.errors import ManifestError, UnsupportedFormatError
from edgeml.runtimes.registry import RUNTIMES

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_REQUIRED = ("format", "name", "version", "created", "target", "runtime", "precision", "model", "files",
             "inputs", "outputs")


def parse_semver(version: str) -> tuple[Any, ...]:
    """A sort key for a semantic version; pre-releases sort before their release (1.0.0-rc.1 < 1.0.0)."""
    m = _SEMVER.match(version)
    if not m:
        raise ManifestError(f"version '{version}' is not a semantic version like 1.2.0")
    ids = m.group(4).split(".") if m.group(4) else []
    pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in ids)
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if ids else 1, pre


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        try:
            return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"tensor spec {data!r} needs name, dtype and shape") from exc

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


class Manifest:
    """A validated manifest. Construct with :meth:`from_dict` or :meth:`from_bytes`."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    # -- construction / serialisation ---------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest.json is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise ManifestError("manifest.json must hold a JSON object")
        check_format(raw)
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ManifestError(f"manifest.json misses required keys: {', '.join(missing)}")
        m = cls(raw)
        parse_semver(m.version)
        if m.runtime not in RUNTIMES:
            raise ManifestError(f"manifest runtime '{m.runtime}' is not one of {', '.join(RUNTIMES)}")
        if not isinstance(raw["target"], dict) or "id" not in raw["target"]:
            raise ManifestError("manifest 'target' must be an object with an 'id'")
        paths = [f.path for f in m.files]
        if len(set(paths)) != len(paths):
            raise ManifestError("manifest 'files' lists a path twice")
        if m.model not in paths:
            raise ManifestError(f"manifest 'model' names {m.model}, which is not in 'files'")
        m.inputs, m.outputs  # noqa: B018 - validates the tensor specs
        return m

    def to_bytes(self) -> bytes:
        return canonical_json(self.raw)

    # -- typed access --------------------------------------------------------------------------------
    @property
    def format(self) -> int:
        return int(self.raw["format"])

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def version(self) -> str:
        return str(self.raw["version"])

    @property
    def target_id(self) -> str:
        return str(self.raw["target"]["id"])

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.raw["target"])

    @property
    def runtime(self) -> str:
        return str(self.raw["runtime"])

    @property
    def runtime_preferences(self) -> list[str]:
        """Execution providers (ONNX Runtime) or devices (OpenVINO) in preference order."""
        return [str(p) for p in self.raw.get("runtime_preferences", [])]

    @property
    def precision(self) -> str:
        return str(self.raw["precision"])

    @property
    def model(self) -> str:
        """Path (inside the bundle) of the main model file: .onnx, OpenVINO .xml, or .tflite."""
        return str(self.raw["model"])

    @property
    def files(self) -> list[FileEntry]:
        try:
            return [FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in self.raw["files"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError("manifest 'files' entries need path, size and sha256") from exc

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(t) for t in self.raw["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(t) for t in self.raw["outputs"]]

    @property
    def smoke(self) -> dict[str, Any] | None:
        smoke = self.raw.get("smoke")
        return dict(smoke) if smoke else None

    @property
    def reference_stats(self) -> dict[str, Any]:
        return dict(self.raw.get("reference_stats") or {})

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return parse_semver(self.version)

    def __repr__(self) -> str:
        return f"Manifest({self.name}@{self.version}, target={self.target_id}, runtime={self.runtime}, precision={self.precision})"


def check_format(raw: Mapping[str, Any]) -> None:
    fmt = raw.get("format")
    if fmt != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"bundle format {fmt!r} is not supported by this edgeml (it reads format {FORMAT_VERSION}); "
            "upgrade edgeml, or rebuild the bundle with this version"
        )


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
