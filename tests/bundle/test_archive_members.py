"""Reading archive members: which names and types a bundle may hold, caps that hold exactly at their
limit, members read in bounded chunks, and every way a download can end early reported as truncation."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from edgeml.bundle import TrustStore, verify_bundle
from edgeml.bundle.archive import iter_chunks, read_member, safe_member_name
from edgeml.errors import ManifestError, TruncatedBundleError, UnsafeArchiveError
from tests.bundle.test_verify import _file, _write


def _info(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize(("name", "normal"), [
    ("a", "a"), ("model/model.onnx", "model/model.onnx"), ("./model//x.bin", "model/x.bin"), ("ab:c", "ab:c"),
])
def test_plain_relative_names_are_kept_normalised(name: str, normal: str) -> None:
    assert safe_member_name(_info(name)) == normal


@pytest.mark.parametrize(("name", "reason"), [
    ("/etc/passwd", "has an absolute path"),
    ("C:", "has an absolute path"), ("C:x", "has an absolute path"), ("c:/windows/x", "has an absolute path"),
    ("model\\..\\..\\x", "has an absolute path"),
    ("..", "contains '..'"), ("a/../../b", "contains '..'"),
    (".", "has an invalid path"), ("./", "has an invalid path"), ("a/..", "contains '..'"),
])
def test_names_that_could_leave_the_bundle_directory_are_refused(name: str, reason: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=f"bundle member '{name}' {reason}".replace("\\", "\\\\")
                       .replace(".", "\\.")):
        safe_member_name(_info(name))


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_and_fifos_are_refused(kind: bytes) -> None:
    with pytest.raises(UnsafeArchiveError, match="'dev' is a device or fifo"):
        safe_member_name(_info("dev", kind))


def test_other_member_types_are_refused_by_type() -> None:
    with pytest.raises(UnsafeArchiveError, match="'label' has unsupported type b'V'"):
        safe_member_name(_info("label", b"V"))


def _member_in(data: bytes, limit: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = _info("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r|") as tar:
        member = tar.next()
        assert member is not None
        return read_member(tar, member, limit)


def test_a_small_member_may_be_exactly_as_large_as_its_cap() -> None:
    assert _member_in(b"x" * 100, limit=100) == b"x" * 100
    with pytest.raises(UnsafeArchiveError, match=r"'manifest.json' is 101 bytes, over the 100-byte cap"):
        _member_in(b"x" * 101, limit=100)


def test_a_manifest_that_is_a_directory_is_refused(tmp_path: Path, trust: TrustStore) -> None:
    bundle = _write(tmp_path / "dir.edgepkg", [(_info("manifest.json", tarfile.DIRTYPE), b"")])
    with pytest.raises(UnsafeArchiveError, match=r"'manifest.json' is not a regular file"):
        verify_bundle(bundle, trust)


def test_a_download_cut_inside_the_manifest_names_it(tmp_path: Path, trust: TrustStore) -> None:
    whole = _write(tmp_path / "whole.edgepkg", [_file("manifest.json", b"{}" * 2000)])
    cut = tmp_path / "cut.edgepkg"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(TruncatedBundleError, match=r"ends inside member 'manifest.json' \(truncated download\?\)"):
        verify_bundle(cut, trust)
    with pytest.raises(ManifestError):   # the same manifest whole is read (and refused for its content)
        verify_bundle(whole, trust)


def test_members_are_read_in_bounded_chunks_and_never_past_their_size() -> None:
    f = io.BytesIO(b"abcdefghij" + b"next member")
    assert list(iter_chunks(f, 10, "m", chunk_size=4)) == [b"abcd", b"efgh", b"ij"]
    assert f.read() == b"next member"


class Failing(io.RawIOBase):
    """A member stream whose read raises: what a cut connection or a cut zstd frame looks like."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error()


class ZstdStreamError(Exception):
    """What a zstd binding other than zstandard's C backend raises for a cut frame."""


@pytest.mark.parametrize("error", [
    lambda: OSError("connection reset"), lambda: EOFError(), lambda: tarfile.ReadError("unexpected end of data"),
    lambda: zstandard.ZstdError("incomplete frame"), lambda: ZstdStreamError("incomplete frame"),
])
def test_a_stream_that_fails_while_reading_is_a_truncated_bundle(error: Callable[[], BaseException]) -> None:
    with pytest.raises(TruncatedBundleError, match=r"bundle ends inside member 'model.onnx' \(truncated download\?\)"):
        list(iter_chunks(Failing(error), 10, "model.onnx"))  # type: ignore[arg-type]


def test_other_errors_while_reading_are_not_disguised_as_truncation() -> None:
    with pytest.raises(ValueError, match="a bug"):
        list(iter_chunks(Failing(lambda: ValueError("a bug")), 10, "m"))  # type: ignore[arg-type]


def test_a_stream_that_ends_early_is_a_truncated_bundle() -> None:
    with pytest.raises(TruncatedBundleError, match=r"bundle ends inside member 'm' \(truncated download\?\)$"):
        list(iter_chunks(io.BytesIO(b"short"), 10, "m"))
