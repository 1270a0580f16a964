"""Binary deltas (edgeml.bundle.delta) and the agent's side of them (edgeml_agent.updates.delta): a delta
rebuilds the new tar stream exactly, and everything else — other base bytes, a corrupt or oversized
delta, a result larger than the signed size or with another hash — is refused with a reason, never
written where the verifying state would pick it up."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey
from edgeml.bundle import delta as deltas
from edgeml.bundle.delta import DeltaError, apply_delta, make_delta, tar_digest, tar_stream
from edgeml.desired import DesiredModel
from edgeml_agent.updates.delta import DeltaUnavailable, fetch_delta, installed_bundle, keep_installed
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


def _pair(size: int = 1 << 20, changed: int = 16 << 10) -> tuple[bytes, bytes]:
    old = os.urandom(size)
    return old, old[: size // 2] + os.urandom(changed) + old[size // 2 + changed:]


def test_a_delta_rebuilds_the_new_bytes_and_carries_little_more_than_what_changed() -> None:
    old, new = _pair()
    made = make_delta(old, new, level=3)
    assert len(made) < 2 * (16 << 10)          # the 16 KB that changed, not the 1 MB
    assert apply_delta(old, made, max_result_bytes=len(new)) == new


def test_a_delta_applied_to_other_bytes_is_refused() -> None:
    old, new = _pair()
    made = make_delta(old, new, level=3)
    with pytest.raises(DeltaError, match="does not apply to the installed bundle"):
        apply_delta(os.urandom(len(old)), made, max_result_bytes=len(new))


def test_a_corrupt_delta_and_a_non_delta_are_refused() -> None:
    old, new = _pair()
    made = bytearray(make_delta(old, new, level=3))
    made[len(made) // 2] ^= 0xFF
    with pytest.raises(DeltaError, match="does not apply"):
        apply_delta(old, bytes(made), max_result_bytes=len(new))
    with pytest.raises(DeltaError, match="not a delta"):
        apply_delta(old, b"<html>not found</html>", max_result_bytes=len(new))


def test_a_delta_that_would_rebuild_more_than_the_signed_size_is_refused_before_decompressing() -> None:
    old, new = _pair()
    with pytest.raises(DeltaError, match=f"would rebuild {len(new)} bytes.*allows {len(new) - 1}"):
        apply_delta(old, make_delta(old, new, level=3), max_result_bytes=len(new) - 1)


def test_inputs_over_the_delta_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _pair(size=64 << 10, changed=1024)
    monkeypatch.setattr(deltas, "MAX_DELTA_INPUT_BYTES", 32 << 10)
    with pytest.raises(DeltaError, match="over the 32768-byte delta limit"):
        make_delta(old, new)
    with pytest.raises(DeltaError, match="over the delta limit"):
        apply_delta(old, b"", max_result_bytes=len(new))


def test_the_tar_stream_of_a_compressed_bundle_is_its_uncompressed_tar(tmp_path: Path,
                                                                      signing_key: SigningKey) -> None:
    import tarfile

    import zstandard

    zst = make_bundle(tmp_path, signing_key, tiny_mlp(tmp_path / "m.onnx"))
    plain = tmp_path / "plain.edgepkg"
    with zstandard.ZstdDecompressor().stream_reader(open(zst, "rb")) as reader:
        plain.write_bytes(reader.read())
    assert zst.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" and tarfile.is_tarfile(plain)
    assert tar_stream(zst) == tar_stream(plain) == plain.read_bytes()
    found = tar_digest(zst)
    assert (found.sha256, found.size) == (hashlib.sha256(plain.read_bytes()).hexdigest(), plain.stat().st_size)
    with pytest.raises(DeltaError, match="more than 1000 bytes of tar"):
        tar_stream(zst, max_bytes=1000)


# -- the agent's side -----------------------------------------------------------------------------------
class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.body = status, body

    def iter_bytes(self) -> Iterator[bytes]:
        for i in range(0, len(self.body), 4096):
            yield self.body[i:i + 4096]


class _OneAnswer:
    """The HTTP seam answering every GET with one status and body, recording the URLs and headers."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        self.asked: list[tuple[str, dict[str, str]]] = []

    def get(self, url: str, *, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        raise AssertionError("not used")

    @contextmanager
    def stream(self, url: str, *, headers: Mapping[str, str], timeout: float) -> Iterator[_Response]:
        self.asked.append((url, dict(headers)))
        yield _Response(self.status, self.body)


def _wanted(new: bytes, *, size: int, tar_sha256: str | None = None) -> DesiredModel:
    return DesiredModel("m", "2.0.0", "0" * 64, size, "/v1/bundles/x/download",
                        tar_sha256=tar_sha256 or hashlib.sha256(new).hexdigest(), tar_size=len(new))


@pytest.fixture
def kept(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    old, new = _pair(size=256 << 10, changed=4096)
    base = tmp_path / "dl.edgepkg"
    base.write_bytes(old)
    keep_installed(tmp_path, "m", "1.0.0", base)
    return tmp_path, old, new


def test_the_agent_rebuilds_the_bundle_from_the_kept_one_and_asks_the_fleet_with_its_token(
        kept: tuple[Path, bytes, bytes]) -> None:
    work, old, new = kept
    http = _OneAnswer(200, make_delta(old, new, level=3))
    dest = work / "out.edgepkg"
    fetch_delta(http, "http://fleet:8480/", {"Authorization": "Bearer t"}, _wanted(new, size=len(new)), work, dest)
    assert dest.read_bytes() == new
    assert http.asked == [("http://fleet:8480/v1/bundles/m@2.0.0/delta?from=1.0.0", {"Authorization": "Bearer t"})]


def test_a_rebuilt_bundle_whose_hash_differs_from_the_signed_one_is_not_written(
        kept: tuple[Path, bytes, bytes]) -> None:
    work, old, new = kept
    dest = work / "out.edgepkg"
    with pytest.raises(DeltaUnavailable, match="differs from the signed desired state"):
        fetch_delta(_OneAnswer(200, make_delta(old, new, level=3)), "http://fleet", {},
                    _wanted(new, size=len(new), tar_sha256="ab" * 32), work, dest)
    assert not dest.exists()


def test_a_delta_as_large_as_the_bundle_is_cut_off(kept: tuple[Path, bytes, bytes]) -> None:
    work, old, new = kept
    made = make_delta(old, new, level=3)
    with pytest.raises(DeltaUnavailable, match="larger than the"):
        fetch_delta(_OneAnswer(200, made), "http://fleet", {}, _wanted(new, size=len(made) - 10), work,
                    work / "out.edgepkg")


def test_no_delta_without_a_kept_bundle_or_without_the_fleets_answer(kept: tuple[Path, bytes, bytes],
                                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    work, _, new = kept
    with pytest.raises(DeltaUnavailable, match="HTTP 404"):
        fetch_delta(_OneAnswer(404, b"{}"), "http://fleet", {}, _wanted(new, size=len(new)), work, work / "o")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DeltaUnavailable, match="no installed bundle file of m"):
        fetch_delta(_OneAnswer(200, b""), "http://fleet", {}, _wanted(new, size=len(new)), empty, empty / "o")


def test_keep_installed_keeps_only_the_committed_version(tmp_path: Path) -> None:
    for version in ("1.0.0", "2.0.0"):
        f = tmp_path / "dl"
        f.write_bytes(version.encode())
        keep_installed(tmp_path, "m", version, f)
    found = installed_bundle(tmp_path, "m")
    assert found is not None and found[0] == "2.0.0" and found[1].read_bytes() == b"2.0.0"
    assert [p.name for p in (tmp_path / "installed" / "m").iterdir()] == ["2.0.0.edgepkg"]
