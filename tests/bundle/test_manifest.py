from __future__ import annotations

import pytest

from edgeml.bundle.manifest import Manifest, parse_semver
from edgeml.errors import ManifestError, UnsupportedFormatError

VALID = {
    "format": 1, "name": "m", "version": "1.0.0", "created": "2026-11-26T00:00:00+00:00",
    "target": {"id": "x86-cpu"}, "runtime": "onnxruntime", "precision": "int8", "model": "model.onnx",
    "files": [{"path": "model.onnx", "size": 3, "sha256": "0" * 64}],
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 3]}], "outputs": [],
}


def test_semver_orders_releases_and_prereleases() -> None:
    ordered = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"]
    assert sorted(ordered, key=parse_semver) == ordered


@pytest.mark.parametrize("bad", ["1", "1.0", "v1.0.0", "01.0.0", "1.0.0.0", ""])
def test_non_semver_versions_are_refused(bad: str) -> None:
    with pytest.raises(ManifestError, match="semantic version"):
        parse_semver(bad)


def test_valid_manifest_gives_typed_access() -> None:
    m = Manifest.from_dict(dict(VALID))
    assert (m.name, m.version, m.target_id, m.runtime, m.precision) == ("m", "1.0.0", "x86-cpu", "onnxruntime", "int8")
    assert m.inputs[0].shape == ("N", 3)
    assert Manifest.from_bytes(m.to_bytes()).raw == m.raw


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"format": 7}, UnsupportedFormatError, "format 7"),
        ({"runtime": "tvm"}, ManifestError, "runtime 'tvm'"),
        ({"model": "other.onnx"}, ManifestError, "not in 'files'"),
        ({"target": "x86-cpu"}, ManifestError, r"\$\.target: expected object, got string \"x86-cpu\""),
        ({"target": {}}, ManifestError, r"\$\.target: missing required key\(s\) 'id'"),
        ({"inputs": [{"name": "x"}]}, ManifestError, r"\$\.inputs\[0\]: missing required key\(s\) 'dtype', 'shape'"),
        ({"files": [{"path": "model.onnx", "size": 1, "sha256": "a" * 64}] * 2}, ManifestError,
         "lists a path twice"),
    ],
)
def test_malformed_manifests_are_refused(change: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Manifest.from_dict({**VALID, **change})


def test_manifest_bytes_must_be_json_object() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_bytes(b"\xff\xfe")
    with pytest.raises(ManifestError, match="JSON object"):
        Manifest.from_bytes(b"[1, 2]")
