"""What the bundle reader refuses, and with which error, before anything is unpacked (issue 15).

Path conflicts and reserved names (finding 5: such bundles passed `verify`, then failed `install` with a
raw exception or installed a replaced manifest); extended-header caps at their limit; header fields no
honest writer produces; and manifest or signature JSON that used to escape as TypeError, ValueError or
RecursionError. Legitimate extended headers (long names as PAX or GNU records, ustar prefixes) still read.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeml.bundle import SigningKey, TrustStore, pack_bundle, read_header, unpack_bundle, verify_bundle
from edgeml.bundle.tarstream import TarMember, TarStream
from edgeml.errors import BundleError, ManifestError, SignatureError, TruncatedBundleError, UnsafeArchiveError
from edgeml_agent.cli import main as agent_cli
from tests.security.crafted_archives import (
    MANIFEST,
    file_entries,
    header,
    manifest_bytes,
    member,
    padded,
    pax_record,
    payload,
    signed_header,
    write,
)

MODEL = {"model/model.onnx": b"onnx" * 100}


def _pax(records: bytes, kind: bytes = b"x") -> bytes:
    return header(b"././@PaxHeader", len(records), kind) + padded(records)


def _refused_everywhere(path: Path, trust: TrustStore, tmp_path: Path, error: type[BundleError], match: str) -> None:
    """verify, unpack and `edgeml-agent install` all refuse it with ``error`` and leave nothing behind."""
    with pytest.raises(error, match=match):
        verify_bundle(path, trust)
    with pytest.raises(error, match=match):
        unpack_bundle(path, tmp_path / "out", trust)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.unpacking-*"))
    result = CliRunner().invoke(agent_cli, ["install", str(path), "--data-dir", str(tmp_path / "agent"),
                                            "--trust", str(tmp_path / "trusted.pub")])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert not list((tmp_path / "agent").rglob("model.onnx"))


@pytest.fixture
def trusted_pub(tmp_path: Path, signing_key: SigningKey) -> Path:
    (tmp_path / "trusted.pub").write_bytes(signing_key.public_pem())
    return tmp_path / "trusted.pub"


# -- finding 5: path conflicts and reserved names ---------------------------------------------------

def test_a_file_where_another_listed_file_needs_a_directory_is_refused_by_verify(
        tmp_path: Path, signing_key: SigningKey, trust: TrustStore, trusted_pub: Path) -> None:
    # given a bundle signed by a trusted builder that lists both 'sub' and 'sub/x' (pack_bundle writes it)
    src = tmp_path / "src"
    src.mkdir()
    for name, data in (("model.onnx", b"m" * 10), ("sub", b"file"), ("x", b"below")):
        (src / name).write_bytes(data)
    bundle = tmp_path / "conflict.edgepkg"
    pack_bundle(bundle, MANIFEST, {"model/model.onnx": src / "model.onnx", "sub": src / "sub", "sub/x": src / "x"},
                signing_key)
    # then verify already refuses it, and install never gets to a raw OSError
    _refused_everywhere(bundle, trust, tmp_path, ManifestError,
                        r"'sub/x' needs 'sub' to be a directory, but it is a file")


def test_a_payload_member_named_like_the_manifest_is_refused(tmp_path: Path, signing_key: SigningKey,
                                                             trust: TrustStore, trusted_pub: Path) -> None:
    # given a signed manifest that lists a payload file called manifest.json (it would overwrite the header)
    files = {**MODEL, "manifest.json": b'{"format": 1, "name": "other"}'}
    bundle = write(tmp_path / "reserved.edgepkg", signed_header(signing_key, files), payload(files))
    _refused_everywhere(bundle, trust, tmp_path, ManifestError,
                        r"'manifest.json' is reserved for the bundle's own header")


@pytest.mark.parametrize(("name", "message"), [
    ("manifest.json", "'manifest.json' appears again after the bundle's header; that name is reserved"),
    ("manifest.sig", "'manifest.sig' appears again after the bundle's header; that name is reserved"),
    ("manifest.sig/x", "'manifest.sig/x' is not listed in the signed manifest"),
])
def test_reserved_names_after_the_header_are_refused_even_when_unlisted(
        tmp_path: Path, signing_key: SigningKey, trust: TrustStore, name: str, message: str) -> None:
    bundle = write(tmp_path / "again.edgepkg", signed_header(signing_key, MODEL), payload(MODEL),
                   member(name.encode(), b"{}"))
    with pytest.raises(UnsafeArchiveError, match=message):
        verify_bundle(bundle, trust)


@pytest.mark.parametrize(("directory", "message"), [
    ("model/model.onnx", "'model/model.onnx' is a directory, but the bundle holds a file of that name"),
    ("model/model.onnx/inner", "'model/model.onnx/inner' lies below 'model/model.onnx', which is a file"),
    ("manifest.json", "'manifest.json' is a directory, but the bundle holds a file of that name"),
])
def test_a_directory_member_in_the_place_of_a_file_is_refused(
        tmp_path: Path, signing_key: SigningKey, trust: TrustStore, trusted_pub: Path, directory: str,
        message: str) -> None:
    bundle = write(tmp_path / "dir.edgepkg", signed_header(signing_key, MODEL), header(directory.encode(), 0, b"5"),
                   payload(MODEL))
    _refused_everywhere(bundle, trust, tmp_path, UnsafeArchiveError, message)


def test_directory_members_that_fit_the_listed_files_are_fine(tmp_path: Path, signing_key: SigningKey,
                                                              trust: TrustStore) -> None:
    bundle = write(tmp_path / "dirs.edgepkg", signed_header(signing_key, MODEL), header(b"model/", 0, b"5"),
                   header(b"model", 0, b"5"), header(b"other/deep", 0, b"5"), payload(MODEL))
    unpack_bundle(bundle, tmp_path / "out", trust)
    assert (tmp_path / "out" / "model" / "model.onnx").read_bytes() == MODEL["model/model.onnx"]


@pytest.mark.parametrize(("path", "problem"), [
    ("/etc/passwd", "has an absolute path"), ("model/../../x", "contains '..'"), ("model//x", "is not in normal form"),
    ("./model/x", "is not in normal form"), ("manifest.sig", "is reserved for the bundle's own header"),
])
def test_a_manifest_listing_a_path_that_cannot_be_unpacked_as_listed_is_refused(
        tmp_path: Path, signing_key: SigningKey, trust: TrustStore, path: str, problem: str) -> None:
    entries = file_entries({**MODEL, path: b"data"})
    bundle = write(tmp_path / "paths.edgepkg", signed_header(signing_key, MODEL, files=entries), payload(MODEL))
    with pytest.raises(ManifestError, match=re.escape(f"manifest 'files': '{path}' {problem}")):
        verify_bundle(bundle, trust)


# -- extended headers: caps at their limit; honest ones still read ---------------------------------

def _comment_of(total: int) -> bytes:
    """One PAX 'comment' record of exactly ``total`` bytes."""
    for value_len in range(total, 0, -1):
        record = pax_record("comment", b"c" * value_len)
        if len(record) == total:
            return record
    raise AssertionError(total)


def test_an_extended_header_may_be_exactly_64_kib_and_not_one_byte_more(
        tmp_path: Path, signing_key: SigningKey, trust: TrustStore) -> None:
    body = signed_header(signing_key, MODEL)
    at_cap = write(tmp_path / "at.edgepkg", _pax(_comment_of(64 << 10)), body, payload(MODEL))
    assert verify_bundle(at_cap, trust).manifest.name == "tiny"
    over = write(tmp_path / "over.edgepkg", _pax(_comment_of((64 << 10) + 1)), body, payload(MODEL))
    with pytest.raises(UnsafeArchiveError,
                       match=r"extended tar header \(x\) claims 65537 bytes, over the 65536-byte cap"):
        verify_bundle(over, trust)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_written_by_every_tar_format_are_read(tmp_path: Path, signing_key: SigningKey, trust: TrustStore,
                                                         fmt: int) -> None:
    # given a bundle whose payload path is longer than the 100 bytes a plain header holds
    long_path = "model/" + "/".join(["d" * 40] * 3) + "/model.onnx"
    files = {long_path: b"weights" * 50, "smoke/input.npz": b"x"}
    manifest_and_sig = io.BytesIO(signed_header(signing_key, files, model=long_path))
    buf = io.BytesIO()
    with tarfile.open(fileobj=manifest_and_sig) as src, tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info in src.getmembers():
            tar.addfile(info, src.extractfile(info))
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bundle = tmp_path / "long.edgepkg"
    bundle.write_bytes(buf.getvalue())
    # then each format's way of carrying it (PAX record, GNU 'L' header, ustar prefix) is read
    verified = unpack_bundle(bundle, tmp_path / "out", trust)
    assert verified.model_path.read_bytes() == files[long_path]


def test_pax_path_and_size_records_apply_to_the_next_member(tmp_path: Path, signing_key: SigningKey,
                                                            trust: TrustStore) -> None:
    data = MODEL["model/model.onnx"]
    renamed = _pax(pax_record("path", b"model/model.onnx") + pax_record("size", str(len(data)).encode()))
    bundle = write(tmp_path / "pax.edgepkg", signed_header(signing_key, MODEL), renamed,
                   header(b"placeholder", 0) + padded(data))   # the plain header says 0 bytes; PAX says the truth
    assert unpack_bundle(bundle, tmp_path / "out", trust).model_path.read_bytes() == data


@pytest.mark.parametrize(("parts", "error", "message"), [
    ([_pax(b"99 comment=short\n")], UnsafeArchiveError, "malformed PAX extended header"),
    ([_pax(b"xx comment=short\n")], UnsafeArchiveError, "malformed PAX extended header"),
    ([_pax(pax_record("comment", b"") + b"garbage")], UnsafeArchiveError, "malformed PAX extended header"),
    ([_pax(pax_record("GNU.sparse.map", b"0,10"))], UnsafeArchiveError, "sparse file"),
    ([_pax(pax_record("path", b"a\x00b")), header(b"x", 0)], UnsafeArchiveError, "NUL byte"),
    ([_pax(pax_record("size", b"-5")), header(b"x", 0)], UnsafeArchiveError, "malformed PAX extended header"),
    ([_pax(pax_record("comment", b"x"))] * 9, UnsafeArchiveError, "more than 8 extended headers"),
    ([header(b"././@LongLink", 2000, b"L") + padded(b"a" * 2000)], UnsafeArchiveError,
     "2000 bytes long, over the 1024-byte cap"),
    ([header(b"\xff\xfe", 0)], UnsafeArchiveError, "not UTF-8"),
    ([header(b"sparse", 10, b"S") + padded(b"x" * 10)], UnsafeArchiveError, r"'sparse' has unsupported type b'S'"),
    ([header(b"volume", 0, b"V")], UnsafeArchiveError, r"has unsupported type b'V'"),
    ([header(b"multi", 0, b"M")], UnsafeArchiveError, r"has unsupported type b'M'"),
    ([header(b"dir", 4096, b"5")], UnsafeArchiveError, "directory that claims 4096 bytes"),
    ([header(b"manifest.json", 0, raw_size=b"\x80" + (1 << 80).to_bytes(11, "big"))], UnsafeArchiveError,
     "over the 1048576-byte cap"),
    ([header(b"manifest.json", 0, raw_size=b"\xff" * 12)], TruncatedBundleError, "negative size"),
    ([header(b"manifest.json", 0, raw_size=b"12x4\x00" + bytes(7))], TruncatedBundleError, "invalid size field"),
    ([_pax(pax_record("size", b"2000000")), header(b"manifest.json", 5)], UnsafeArchiveError,
     "2000000 bytes, over the 1048576-byte cap"),
    ([_pax(pax_record("comment", b"x"))], TruncatedBundleError, "ends right after an extended header"),
])
def test_headers_no_honest_writer_produces_are_refused_first(tmp_path: Path, trust: TrustStore,
                                                             parts: list[bytes], error: type[BundleError],
                                                             message: str) -> None:
    bundle = write(tmp_path / "odd.edgepkg", *parts)
    with pytest.raises(error, match=message):
        read_header(bundle)
    with pytest.raises(error, match=message):
        verify_bundle(bundle, trust)


def test_a_header_with_a_wrong_checksum_is_a_corrupt_archive(tmp_path: Path, signing_key: SigningKey,
                                                             trust: TrustStore) -> None:
    broken = bytearray(header(b"model/model.onnx", len(MODEL["model/model.onnx"])))
    broken[0] ^= 0x01
    bundle = write(tmp_path / "sum.edgepkg", signed_header(signing_key, MODEL), bytes(broken),
                   padded(MODEL["model/model.onnx"]))
    with pytest.raises(TruncatedBundleError, match=r"cut short or corrupt.*checksum mismatch at byte"):
        verify_bundle(bundle, trust)
    garbage = write(tmp_path / "garbage.edgepkg", b"\x01" * 512)
    with pytest.raises(TruncatedBundleError, match="not a tar archive"):
        verify_bundle(garbage, trust)


# -- manifest and signature JSON: whatever they hold, a BundleError ---------------------------------

@pytest.mark.parametrize(("document", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, "more than 64 levels deep"),
    (b'{"format": 1, "size": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (json.dumps({**MANIFEST, "format": 1, "created": "x", "files": file_entries(MODEL), "inputs": None}).encode(),
     r"does not match the format 1 schema: \$\.inputs: expected array, got null"),
    (json.dumps({**MANIFEST, "format": 1, "created": "x", "files": [{"path": "p", "size": 1e400, "sha256": "0"}]})
     .encode().replace(b"Infinity", b"1e400"), "too large for a 64-bit float"),
])
def test_a_manifest_of_any_shape_is_a_manifest_error(tmp_path: Path, trust: TrustStore, document: bytes,
                                                     message: str) -> None:
    bundle = write(tmp_path / "json.edgepkg", member(b"manifest.json", document), member(b"manifest.sig", b"{}"))
    with pytest.raises(ManifestError, match=message):
        read_header(bundle)


@pytest.mark.parametrize("document", [b"[" * 50_000, b'{"algorithm": "ed25519", "key_id": ' + b"1" * 5000 + b"}"])
def test_a_signature_document_of_any_shape_is_a_signature_error(tmp_path: Path, signing_key: SigningKey,
                                                                trust: TrustStore, document: bytes) -> None:
    bundle = write(tmp_path / "sig.edgepkg", member(b"manifest.json", manifest_bytes(MODEL)),
                   member(b"manifest.sig", document), payload(MODEL))
    with pytest.raises(SignatureError, match=r"manifest\.sig is malformed"):
        verify_bundle(bundle, trust)


def test_a_manifest_over_one_mib_is_refused_before_it_is_read(tmp_path: Path, trust: TrustStore) -> None:
    bundle = write(tmp_path / "big.edgepkg", header(b"manifest.json", (1 << 20) + 1))
    with pytest.raises(UnsafeArchiveError, match="1048577 bytes, over the 1048576-byte cap"):
        verify_bundle(bundle, trust)


@pytest.mark.parametrize("kind", [b"S", b"V", b"M", b"N", b"D", b"A", b"\xff"])
def test_the_tar_reader_itself_refuses_types_whose_data_layout_it_does_not_know(kind: bytes) -> None:
    # a GNU sparse member ('S') is followed by sparse maps, not plain data: skipping its claimed size
    # would read the next header from the middle of a map, so the reader stops at the header
    stream = TarStream(io.BytesIO(header(b"odd", 10, kind) + padded(b"x" * 10) + member(b"next", b"y")))
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"'odd' has unsupported type {kind!r}")):
        stream.next()


@pytest.mark.parametrize("signed", [False, True])
def test_header_checksums_are_accepted_over_unsigned_and_signed_bytes(signed: bool) -> None:
    # given a header with a non-ASCII name whose checksum was summed the POSIX way, or over signed chars
    block = bytearray(header("modèle.onnx".encode(), 3))
    block[148:156] = b" " * 8
    total = sum(block) - (256 * sum(1 for b in block if b >= 0x80) if signed else 0)
    block[148:156] = b"%06o\x00 " % total
    # then the reader takes either, and a checksum that is neither is corruption
    assert TarStream(io.BytesIO(bytes(block) + padded(b"abc"))).next() == TarMember("modèle.onnx", 3, b"0")
    block[150] = ord("7") if block[150] != ord("7") else ord("6")
    with pytest.raises(TruncatedBundleError, match="checksum mismatch at byte 0"):
        TarStream(io.BytesIO(bytes(block) + padded(b"abc"))).next()
