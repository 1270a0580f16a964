"""Fuzzing the bundle reader (issue 15, item 7): whatever the bytes, only a BundleError, in bounded memory.

Every generated input goes through all three ways a bundle is read — ``read_header`` (`edgeml inspect`,
the agent's first look), ``verify_bundle`` (fleet upload, OTA) and ``unpack_bundle`` (install) — and
may only succeed or raise an :class:`edgeml.errors.BundleError` subclass: any other exception fails the
test. The inputs are small but claim a lot (sizes up to 2**66, extended headers of up to 1 GiB, zstd
streams that really decompress to hundreds of MB), and the Python heap traced while they are read must
stay under :data:`MAX_TRACED_BYTES`: a reader that trusted a claim would allocate it.

Inputs: archives of random headers (every type flag, odd magics, base-256 and garbage size fields),
PAX records (valid, malformed, sparse, oversized), extended-header bombs, a genuine signed bundle with
flipped, inserted or cut bytes, and each of those optionally zstd-compressed (and cut or flipped after
compression).
"""

from __future__ import annotations

import contextlib
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeml.bundle import SigningKey, TrustStore, read_header, unpack_bundle, verify_bundle
from edgeml.errors import BundleError
from tests.security.crafted_archives import (
    GIB,
    end_of_archive,
    extension_bomb,
    header,
    padded,
    pax_record,
    payload,
    signed_header,
    zstd,
    zstd_fill,
)

MAX_TRACED_BYTES = 16 << 20
EXAMPLES = 300
KEY = SigningKey.generate()
TRUST = TrustStore([KEY.public_key])
FILES = {"model/model.onnx": bytes(range(256)) * 4, "smoke/input.npz": b"sample" * 20}
GENUINE = signed_header(KEY, FILES) + payload(FILES) + end_of_archive()

TYPES = [b"0", b"\x00", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S", b"V", b"M", b"N",
         b"D", b"A", b"\xff"]
MAGICS = [b"ustar\x0000", b"ustar  \x00", bytes(8), b"garbage!"]
NAMES = [b"manifest.json", b"manifest.sig", b"model/model.onnx", b"smoke/input.npz", b"../x", b"/abs", b"model",
         b"model/", b"a" * 100, b"\xff\xfe", b"sub/x", b"sub", b"manifest.json/x", b""]
PAX_KEYS = ["path", "size", "linkpath", "comment", "mtime", "GNU.sparse.map", "GNU.sparse.size", "hdrcharset"]

sizes = st.one_of(st.integers(0, 4096), st.integers(0, 2**40), st.sampled_from([GIB, 2**33 - 1, 2**66, 8**11 - 1]))
raw_size_fields = st.one_of(st.none(), st.binary(min_size=12, max_size=12),
                            st.integers(0, 2**88 - 1).map(lambda n: b"\x80" + n.to_bytes(11, "big")),
                            st.just(b"\xff" * 12))


@st.composite
def members(draw: st.DrawFn) -> bytes:
    """One header (any type, any claim) and some data that may or may not match what it claims."""
    name = draw(st.one_of(st.sampled_from(NAMES), st.binary(max_size=110)))
    block = header(name, draw(sizes), draw(st.sampled_from(TYPES)), raw_size=draw(raw_size_fields),
                   magic=draw(st.sampled_from(MAGICS)), linkname=draw(st.sampled_from([b"", b"/etc/passwd"])))
    return block + padded(draw(st.binary(max_size=1500)))


@st.composite
def pax_headers(draw: st.DrawFn) -> bytes:
    """A PAX header whose records are valid, malformed or hostile; its size field may lie too."""
    records = b""
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.one_of(st.sampled_from(PAX_KEYS), st.text(max_size=12)))
        value = draw(st.one_of(st.sampled_from([b"manifest.json", b"-1", b"99999999999999999999", b"a\x00b"]),
                               st.binary(max_size=40), st.integers(0, 2**70).map(lambda n: str(n).encode())))
        record = pax_record(key, value)
        if draw(st.integers(0, 9)) == 0:   # a lying length prefix
            record = str(draw(st.integers(0, 10**12))).encode() + record[record.index(b" "):]
        records += record
    claimed = draw(st.one_of(st.just(len(records)), sizes))
    return header(b"././@PaxHeader", claimed, draw(st.sampled_from([b"x", b"g"]))) + padded(records)


@st.composite
def random_archives(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.one_of(members(), pax_headers(), st.just(signed_header(KEY, FILES))), max_size=6))
    data = b"".join(parts) + draw(st.sampled_from([b"", end_of_archive(), bytes(512)]))
    return _maybe_cut(draw, data)


@st.composite
def mutated_genuine(draw: st.DrawFn) -> bytes:
    """The genuine signed bundle with bytes flipped, inserted or cut (anywhere: headers, JSON, payload)."""
    data = bytearray(GENUINE)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "set", "insert"]))
        if how == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "set":
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=600))
    return _maybe_cut(draw, bytes(data))


@st.composite
def bombs(draw: st.DrawFn) -> bytes:
    """A zstd stream with an extended header that really holds what it claims, somewhere in a bundle."""
    kind = draw(st.sampled_from([b"x", b"g", b"L", b"K"]))
    claimed = draw(st.sampled_from([(64 << 10) + 1, 1 << 20, 64 << 20, 512 << 20]))
    head, tail, fill = extension_bomb(kind, claimed)
    cut = draw(st.sampled_from([0, len(signed_header(KEY, FILES))]))   # first, or after the signed header
    return zstd(GENUINE[:cut] + head) + zstd_fill(fill) + zstd(tail + GENUINE[cut:])


def _maybe_cut(draw: st.DrawFn, data: bytes) -> bytes:
    if data and draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))]
    return data


@st.composite
def maybe_zstd(draw: st.DrawFn, inner: st.SearchStrategy[bytes]) -> bytes:
    data = draw(inner)
    if not draw(st.booleans()):
        return data
    packed = bytearray(zstd(data))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(packed) - 1))
        packed[at] ^= 1 << draw(st.integers(0, 7))
    return _maybe_cut(draw, bytes(packed))


def read_every_way(data: bytes) -> int:
    """Read ``data`` as a bundle in every way; return the peak traced heap. Non-BundleErrors propagate."""
    readers: list[Callable[[Path, Path], object]] = [
        lambda p, _: read_header(p),
        lambda p, _: verify_bundle(p, TRUST),
        lambda p, out: unpack_bundle(p, out, TRUST),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.edgepkg"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            for read in readers:
                with contextlib.suppress(BundleError):
                    read(path, Path(tmp) / "out")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(maybe_zstd(random_archives()))
def test_random_headers_and_pax_records(data: bytes) -> None:
    assert read_every_way(data) < MAX_TRACED_BYTES


@FUZZ
@given(maybe_zstd(mutated_genuine()))
def test_a_genuine_bundle_with_flipped_inserted_or_cut_bytes(data: bytes) -> None:
    assert read_every_way(data) < MAX_TRACED_BYTES


@settings(FUZZ, max_examples=24)
@given(bombs())
def test_extended_header_bombs(data: bytes) -> None:
    assert read_every_way(data) < MAX_TRACED_BYTES


def test_the_genuine_bundle_reads_whole() -> None:
    """The mutations start from a bundle that really verifies (or the fuzz would only test refusals)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "genuine.edgepkg"
        path.write_bytes(GENUINE)
        assert verify_bundle(path, TRUST).manifest.name == "tiny"
        path.write_bytes(zstd(GENUINE))
        assert unpack_bundle(path, Path(tmp) / "out", TRUST).model_path.read_bytes() == FILES["model/model.onnx"]
