"""Bundle verification: every malformed-bundle case is refused with its own error, and nothing is unpacked."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from edgeml.bundle import (
    SigningKey,
    TrustStore,
    load_unpacked,
    pack_bundle,
    read_header,
    unpack_bundle,
    verify_bundle,
)
from edgeml.bundle.manifest import canonical_json
from edgeml.bundle.pack import signature_document
from edgeml.errors import (
    BundleError,
    IntegrityError,
    ManifestError,
    SignatureError,
    TruncatedBundleError,
    UnsafeArchiveError,
    UnsupportedFormatError,
)

BASE_MANIFEST = {
    "name": "tiny", "version": "1.2.0", "target": {"id": "x86-cpu"}, "runtime": "onnxruntime",
    "precision": "fp32", "model": "model/model.onnx",
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 3]}],
}


@pytest.fixture
def payload(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "src" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(bytes(range(256)) * 64)
    sample = tmp_path / "src" / "input.npz"
    sample.write_bytes(b"sample-bytes" * 10)
    return {"model/model.onnx": model, "smoke/input.npz": sample}


@pytest.fixture(params=["zstd", None])
def bundle(request: pytest.FixtureRequest, tmp_path: Path, payload: dict[str, Path], signing_key: SigningKey) -> Path:
    out = tmp_path / f"tiny-{request.param}.edgepkg"
    pack_bundle(out, BASE_MANIFEST, payload, signing_key, compression=request.param)
    return out


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    raw = bundle.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append((m, f.read() if f else b""))
    return out


def _payload_end(bundle: Path) -> int:
    with tarfile.open(bundle) as tar:
        last = tar.getmembers()[-1]
        return last.offset_data + last.size


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _resign(members: list[tuple[tarfile.TarInfo, bytes]], key: SigningKey,
            change: Callable[[dict[str, object]], object]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Change the manifest and sign it again with ``key`` (an attacker who holds *a* key)."""
    manifest = json.loads(members[0][1])
    change(manifest)
    mbytes = canonical_json(manifest)
    return [_file("manifest.json", mbytes), _file("manifest.sig", signature_document(key, mbytes)), *members[2:]]


def test_round_trip_unpacks_exactly_the_listed_files(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    verified = unpack_bundle(bundle, tmp_path / "out", trust)
    assert verified.manifest.name == "tiny" and verified.manifest.version == "1.2.0"
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["manifest.json", "manifest.sig", "model/model.onnx", "smoke/input.npz"]
    assert verified.model_path.read_bytes() == bytes(range(256)) * 64
    assert load_unpacked(tmp_path / "out", trust).manifest.to_bytes() == verified.manifest.to_bytes()


def test_manifest_records_size_and_hash_of_every_file(bundle: Path) -> None:
    header = read_header(bundle)
    entries = {f.path: f for f in header.manifest.files}
    assert set(entries) == {"model/model.onnx", "smoke/input.npz"}
    assert entries["model/model.onnx"].size == 256 * 64
    assert len(entries["model/model.onnx"].sha256) == 64


def test_wrong_key_is_refused(bundle: Path, tmp_path: Path) -> None:
    other = TrustStore([SigningKey.generate().public_key])
    with pytest.raises(SignatureError, match="not trusted"):
        unpack_bundle(bundle, tmp_path / "out", other)
    assert not (tmp_path / "out").exists()


def test_unsigned_bundle_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = [m for m in _members(bundle) if m[0].name != "manifest.sig"]
    with pytest.raises(SignatureError, match="unsigned"):
        verify_bundle(_write(tmp_path / "unsigned.edgepkg", members), trust)


def test_altered_manifest_breaks_the_signature(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = _members(bundle)
    manifest = json.loads(members[0][1])
    manifest["version"] = "9.9.9"
    members[0] = _file("manifest.json", canonical_json(manifest))
    with pytest.raises(SignatureError, match="does not match"):
        verify_bundle(_write(tmp_path / "altered.edgepkg", members), trust)


def test_flipped_byte_in_model_fails_its_hash(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = _members(bundle)
    i = next(i for i, (m, _) in enumerate(members) if m.name == "model/model.onnx")
    data = bytearray(members[i][1])
    data[100] ^= 0x01
    members[i] = _file("model/model.onnx", bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        unpack_bundle(_write(tmp_path / "flipped.edgepkg", members), tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.unpacking-*"))


def test_member_size_differing_from_manifest_is_refused_before_reading(bundle: Path, trust: TrustStore,
                                                                      tmp_path: Path) -> None:
    members = _members(bundle)
    i = next(i for i, (m, _) in enumerate(members) if m.name == "smoke/input.npz")
    members[i] = _file("smoke/input.npz", members[i][1] + b"extra")
    with pytest.raises(IntegrityError, match="signed manifest says"):
        verify_bundle(_write(tmp_path / "grown.edgepkg", members), trust)


@pytest.mark.parametrize(
    ("name", "message"),
    [("/etc/passwd", "absolute path"), ("../escape.txt", "'..'"), ("model/../../escape", "'..'")],
)
def test_dangerous_paths_are_refused(bundle: Path, trust: TrustStore, tmp_path: Path, name: str, message: str) -> None:
    members = [*_members(bundle), _file(name, b"evil")]
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_bundle(_write(tmp_path / "evil.edgepkg", members), tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(bundle: Path, trust: TrustStore, tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("model/link")
    link.type, link.linkname = kind, "/etc/shadow"
    members = [*_members(bundle), (link, b"")]
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        verify_bundle(_write(tmp_path / "link.edgepkg", members), trust)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_are_refused(bundle: Path, trust: TrustStore, tmp_path: Path, kind: bytes) -> None:
    dev = tarfile.TarInfo("model/dev")
    dev.type = kind
    members = [*_members(bundle), (dev, b"")]
    with pytest.raises(UnsafeArchiveError, match="device or fifo"):
        verify_bundle(_write(tmp_path / "dev.edgepkg", members), trust)


def test_oversized_member_is_refused_by_cap(bundle: Path, trust: TrustStore) -> None:
    with pytest.raises(UnsafeArchiveError, match="over the 1000-byte cap"):
        verify_bundle(bundle, trust, max_member_bytes=1000)


def test_oversized_bundle_total_is_refused(bundle: Path, trust: TrustStore) -> None:
    with pytest.raises(UnsafeArchiveError, match="more than the"):
        verify_bundle(bundle, trust, max_total_bytes=16_000)


def test_oversized_manifest_is_refused_without_reading_it(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = _members(bundle)
    members[0] = _file("manifest.json", b" " * (5 << 20))
    with pytest.raises(UnsafeArchiveError, match="cap"):
        verify_bundle(_write(tmp_path / "bigmanifest.edgepkg", members), trust)


def test_unlisted_member_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = [*_members(bundle), _file("model/extra.bin", b"smuggled")]
    with pytest.raises(UnsafeArchiveError, match="not listed in the signed manifest"):
        verify_bundle(_write(tmp_path / "extra.edgepkg", members), trust)


@pytest.mark.parametrize("keep_fraction", [0.05, 0.5, 0.9])
def test_truncated_archive_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path, keep_fraction: float) -> None:
    data = bundle.read_bytes()
    # A plain tar ends in zero padding that carries nothing: cut within the bytes that hold members.
    end = len(data) if data[:4] == b"\x28\xb5\x2f\xfd" else _payload_end(bundle)
    cut = tmp_path / "cut.edgepkg"
    cut.write_bytes(data[: int(end * keep_fraction)])
    with pytest.raises(TruncatedBundleError):
        unpack_bundle(cut, tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()


def test_garbage_file_is_not_a_bundle(tmp_path: Path, trust: TrustStore) -> None:
    junk = tmp_path / "junk.edgepkg"
    junk.write_bytes(b"this is not a tar archive at all" * 50)
    with pytest.raises(TruncatedBundleError, match="not a bundle"):
        verify_bundle(junk, trust)


def test_missing_listed_file_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = [m for m in _members(bundle) if m[0].name != "smoke/input.npz"]
    with pytest.raises(TruncatedBundleError, match="lacks 1 file"):
        verify_bundle(_write(tmp_path / "missing.edgepkg", members), trust)


def test_unknown_format_version_is_refused_as_such(bundle: Path, trust: TrustStore, signing_key: SigningKey,
                                                   tmp_path: Path) -> None:
    members = _resign(_members(bundle), signing_key, lambda m: m.update(format=2))
    with pytest.raises(UnsupportedFormatError, match="format 2 is not supported"):
        verify_bundle(_write(tmp_path / "v2.edgepkg", members), trust)


def test_manifest_must_come_first(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = _members(bundle)
    members = [members[2], *members[:2], *members[3:]]
    with pytest.raises(ManifestError, match="first member"):
        verify_bundle(_write(tmp_path / "order.edgepkg", members), trust)


def test_malformed_signature_document_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = _members(bundle)
    members[1] = _file("manifest.sig", b"{not json")
    with pytest.raises(SignatureError, match="malformed"):
        verify_bundle(_write(tmp_path / "badsig.edgepkg", members), trust)


def test_manifest_without_required_keys_is_refused(bundle: Path, trust: TrustStore, signing_key: SigningKey,
                                                   tmp_path: Path) -> None:
    members = _resign(_members(bundle), signing_key, lambda m: m.pop("runtime"))
    with pytest.raises(ManifestError, match="runtime"):
        verify_bundle(_write(tmp_path / "noruntime.edgepkg", members), trust)


def test_existing_destination_is_never_overwritten(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("good model")
    with pytest.raises(UnsafeArchiveError, match="already exists"):
        unpack_bundle(bundle, dest, trust)
    assert (dest / "keep.txt").read_text() == "good model"


def test_unpacked_bundle_modified_on_disk_is_detected(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    verified = unpack_bundle(bundle, tmp_path / "out", trust)
    verified.model_path.write_bytes(b"replaced")
    with pytest.raises(IntegrityError, match="modified"):
        load_unpacked(tmp_path / "out", trust)


def test_every_bundle_error_is_an_edgeml_bundle_error() -> None:
    for cls in (UnsupportedFormatError, TruncatedBundleError, UnsafeArchiveError, SignatureError, IntegrityError,
                ManifestError):
        assert issubclass(cls, BundleError)
