"""The bundle manifest (format version 1): the single source of truth about a bundle.

The manifest is a JSON object. :class:`Manifest` checks it in three steps before any field is used:
the bytes are parsed within size and nesting limits (:mod:`edgeml.jsonlimits`), the shape and types are
validated against ``edgeml/schemas/manifest.schema.json`` (every offending JSON path in one error), and
then the meaning (format version, semver, runtime, files) is checked here. It gives typed access to the
keys every side relies on, while ``raw`` keeps everything (fidelity, benchmark, provenance, ...) as written.
Serialisation is canonical (sorted keys, fixed separators) because the signature covers its bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeml import schemas
from edgeml.bundle.prepost import (
    AudioFraming,
    StatePair,
    TokenizerSpec,
    audio_framing,
    check_state_pairs,
    state_pairs_from_json,
)
from edgeml.errors import ManifestError, UnsupportedFormatError
from edgeml.jsonlimits import load_document
from edgeml.runtimes.registry import RUNTIMES

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
# The cap the archive reader applies to the manifest member: parsed JSON grows ~30x in memory.
MAX_MANIFEST_BYTES = 1 << 20
MAX_MANIFEST_DEPTH = 64           # a real manifest nests about 5 levels; pass configs may add a few


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
        """From a tensor spec the manifest schema accepted (name, dtype, shape)."""
        return cls(data["name"], data["dtype"], tuple(data["shape"]))

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
    def from_bytes(cls, data: bytes, source: str | None = None) -> Manifest:
        """Parse and validate manifest.json's bytes; ``source`` (the bundle's path) prefixes parse errors."""
        where = f"{source}: " if source else ""
        raw = load_document(data, f"{where}manifest.json", ManifestError, max_bytes=MAX_MANIFEST_BYTES,
                            max_depth=MAX_MANIFEST_DEPTH)
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        """Validate a parsed manifest: format version, then the schema, then the semantic rules."""
        if not isinstance(raw, dict):
            raise ManifestError("manifest.json must hold a JSON object")
        check_format(raw)
        found = schemas.problems("manifest", raw)
        if found:
            raise ManifestError(f"manifest.json does not match the format {FORMAT_VERSION} schema: {'; '.join(found)}")
        m = cls(raw)
        parse_semver(m.version)
        if m.runtime not in RUNTIMES:
            raise ManifestError(f"manifest runtime '{m.runtime}' is not one of {', '.join(RUNTIMES)}")
        paths = [f.path for f in m.files]
        if len(set(paths)) != len(paths):
            raise ManifestError("manifest 'files' lists a path twice")
        if m.model not in paths:
            raise ManifestError(f"manifest 'model' names {m.model}, which is not in 'files'")
        # the optional pre/post-processing keys must fit the model they travel with
        check_state_pairs(m.state, m.inputs, m.outputs)
        if m.tokenizer is not None:
            m.tokenizer.check(m.inputs, paths)
        if m.audio_framing is not None:
            m.audio_framing.check(m.inputs)
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
        return [FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in self.raw["files"]]

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
    def state(self) -> list[StatePair]:
        """State inputs fed from the previous call's outputs (empty for a stateless model)."""
        return state_pairs_from_json(self.raw.get("state"))

    @property
    def tokenizer(self) -> TokenizerSpec | None:
        data = self.raw.get("tokenizer")
        return TokenizerSpec.from_json(data) if data else None

    @property
    def audio_framing(self) -> AudioFraming | None:
        return audio_framing(self.raw.get("preprocess"))

    @property
    def reference_stats(self) -> dict[str, Any]:
        return dict(self.raw.get("reference_stats") or {})

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return parse_semver(self.version)

    def __repr__(self) -> str:
        return (f"Manifest({self.name}@{self.version}, target={self.target_id}, runtime={self.runtime}, "
                f"precision={self.precision})")


def check_format(raw: Mapping[str, Any]) -> None:
    fmt = raw.get("format")
    if fmt != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"bundle format {fmt!r} is not supported by this edgeml (it reads format {FORMAT_VERSION}); "
            "upgrade edgeml, or rebuild the bundle with this version"
        )


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
