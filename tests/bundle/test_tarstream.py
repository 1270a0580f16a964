"""The bounded tar reader on its own: hand-built raw headers, exact names, sizes, limits and refusals."""

from __future__ import annotations

import io
import re

import pytest

from edgeml.bundle.tarstream import (
    MAX_EXTENSIONS_PER_MEMBER,
    MAX_NAME_BYTES,
    ArchiveFormatError,
    TarMember,
    TarStream,
    _parse_pax,
)
from edgeml.errors import UnsafeArchiveError
from tests.security.crafted_archives import end_of_archive, header, member, padded, pax_record


def _ext(data: bytes, kind: bytes = b"x", size: int | None = None) -> bytes:
    return header(b"././@PaxHeader", len(data) if size is None else size, kind) + padded(data)


def _rechecksum(block: bytearray, field: bytes | None = None) -> bytes:
    block[148:156] = b" " * 8
    total = sum(block)
    block[148:156] = field if field is not None else b"%06o\x00 " % total
    return bytes(block)


class _Chunked(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read, and may raise at a given offset."""

    def __init__(self, data: bytes, step: int = 100, fail_at: int | None = None) -> None:
        self._data, self._pos, self._step, self._fail_at = data, 0, step, fail_at

    def read(self, size: int = -1) -> bytes:
        if self._fail_at is not None and self._pos >= self._fail_at:
            raise OSError("boom")
        if size < 0:
            size = len(self._data)
        chunk = self._data[self._pos:self._pos + min(size, self._step)]
        self._pos += len(chunk)
        return chunk


def _members(data: bytes, **kwargs: object) -> list[TarMember]:
    tar = TarStream(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]
    out = []
    while (m := tar.next()) is not None:
        out.append(m)
    return out


def test_member_predicates() -> None:
    assert TarMember("c", 0, b"3").ischr() and not TarMember("c", 0, b"4").ischr()
    assert TarMember("b", 0, b"4").isblk() and not TarMember("b", 0, b"3").isblk()
    assert TarMember("f", 0, b"6").isfifo() and not TarMember("f", 0, b"3").isfifo()


def test_ustar_prefix_full_name_and_linkname() -> None:
    block = bytearray(header(b"n" * 100, 0, b"2", linkname=b"l" * 100))
    block[345:500] = b"p" * 155
    block[500:501] = b"z"
    (m,) = _members(_rechecksum(block) + end_of_archive())
    assert m.name == "p" * 155 + "/" + "n" * 100 and m.linkname == "l" * 100 and m.issym()


def test_one_byte_prefix_and_short_linkname() -> None:
    block = bytearray(header(b"name", 0, b"2", linkname=b"abc"))
    block[345:346] = b"p"
    (m,) = _members(_rechecksum(block) + end_of_archive())
    assert (m.name, m.linkname, m.size) == ("p/name", "abc", 0)


def test_checksum_field_forms() -> None:
    block = bytearray(header(b"a", 0))
    total = sum(_rechecksum(bytearray(block), b" " * 8))
    assert _members(_rechecksum(bytearray(block), b"%06o\x00\x00" % total))[0].name == "a"
    assert _members(_rechecksum(bytearray(block), b"%07o " % total))[0].name == "a"
    with pytest.raises(ArchiveFormatError, match=r"^the archive is not a tar archive \(tar, optionally zstd\): "
                                                 r"header checksum mismatch at byte 0$"):
        _members(_rechecksum(bytearray(block), b"\x00%06o " % total))


def test_signed_checksum_is_accepted() -> None:
    block = bytearray(header("é".encode(), 0))
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    (m,) = _members(_rechecksum(block, b"%06o\x00 " % signed))
    assert m.name == "é"


def test_corrupt_second_header_message() -> None:
    bad = bytearray(header(b"b", 0))
    bad[0:1] = b"c"
    with pytest.raises(ArchiveFormatError, match=r"^the archive has a corrupt tar header: header checksum mismatch "
                                                 r"at byte 512$"):
        _members(member(b"a", b"") + bytes(bad))


def test_size_fields() -> None:
    (m,) = _members(header(b"a", 0, raw_size=b"000000000012") + bytes(512) + end_of_archive())
    assert m.size == 10
    (m,) = _members(header(b"a", 0, raw_size=bytes(12)) + end_of_archive())
    assert m.size == 0
    (m,) = _members(header(b"a", 0, raw_size=b"\x80" + (5).to_bytes(11, "big")) + padded(b"12345")
                    + end_of_archive())
    assert m.size == 5
    with pytest.raises(ArchiveFormatError, match="at byte 512 has a negative size"):
        _members(member(b"a", b"") + header(b"b", 0, raw_size=b"\xff" + bytes(11)))
    with pytest.raises(ArchiveFormatError, match="at byte 512 has an invalid size field"):
        _members(member(b"a", b"") + header(b"b", 0, raw_size=b"00000000018\x00"))


def test_data_read_in_chunks_and_offsets() -> None:
    data = member(b"a", b"0123456789") + member(b"b", b"xyz") + end_of_archive()
    tar = TarStream(_Chunked(data, step=100))
    a = tar.next()
    assert a is not None and (a.name, a.size) == ("a", 10)
    f = tar.extractfile(a)
    assert f is not None
    assert f.read(0) == b""
    assert f.read(3) == b"012"
    assert f.read() == b"3456789"
    assert f.read() == b"" and f.read(5) == b""
    b = tar.next()
    assert b is not None and b.name == "b"
    f = tar.extractfile(b)
    assert f is not None and f.read(100) == b"xyz"
    assert tar.next() is None and tar.next() is None


def test_offsets_after_read_and_skip() -> None:
    bad = b"\x01" * 512
    tar = TarStream(io.BytesIO(member(b"a", b"12345") + bad))
    a = tar.next()
    assert a is not None
    f = tar.extractfile(a)
    assert f is not None and f.read(-1) == b"12345"
    with pytest.raises(ArchiveFormatError, match=r"at byte 1024$"):
        tar.next()
    with pytest.raises(ArchiveFormatError, match=r"at byte 1024$"):
        _members(member(b"a", b"12345") + bad)


def test_truncation_messages() -> None:
    with pytest.raises(ArchiveFormatError, match=r"^the archive is empty$"):
        _members(b"")
    with pytest.raises(ArchiveFormatError, match=re.escape("the archive ends inside a header (byte 100)")):
        _members(header(b"a", 0)[:100])
    with pytest.raises(ArchiveFormatError, match=re.escape("the archive ends inside a header (byte 512)")):
        _members(header(b"././@PaxHeader", 20, b"x"))
    with pytest.raises(ArchiveFormatError, match=re.escape("the archive ends inside a member (byte 515)")):
        _members(header(b"a", 10) + b"abc")


def test_stream_errors_in_headers() -> None:
    with pytest.raises(ArchiveFormatError, match=r"^the archive cannot be read past byte 0: boom$"):
        TarStream(_Chunked(b"", fail_at=0)).next()
    tar = TarStream(_Chunked(member(b"a", b"") + member(b"b", b""), step=512, fail_at=512))
    assert tar.next() is not None
    with pytest.raises(ArchiveFormatError, match=re.escape("cannot be read past byte 512: boom")):
        tar.next()


def test_extractfile_only_current_member() -> None:
    tar = TarStream(io.BytesIO(member(b"a", b"1") + member(b"b", b"2") + end_of_archive()))
    a = tar.next()
    assert a is not None
    assert tar.next() is not None
    with pytest.raises(ValueError, match=r"^a member's data can only be read right after next\(\) returned it$"):
        tar.extractfile(a)


def test_max_headers_exact() -> None:
    data = member(b"a", b"") + member(b"b", b"") + member(b"c", b"") + end_of_archive()
    tar = TarStream(io.BytesIO(data), max_headers=4)
    assert [m.name for m in iter(tar.next, None)] == ["a", "b", "c"]
    assert tar.next() is None and tar.next() is None
    with pytest.raises(UnsafeArchiveError, match=r"^the archive holds more than 3 members; no bundle has that many$"):
        _members(data, max_headers=3)


def test_extension_chain_limit() -> None:
    rec = _ext(pax_record("comment", b"x"))
    (m,) = _members(rec * MAX_EXTENSIONS_PER_MEMBER + member(b"a", b"") + end_of_archive())
    assert m.name == "a"
    with pytest.raises(UnsafeArchiveError, match="more than 8 extended"):
        _members(rec * (MAX_EXTENSIONS_PER_MEMBER + 1) + member(b"a", b""))


def test_pax_path_size_linkpath_and_global() -> None:
    recs = pax_record("path", b"long/" + b"p" * 200) + pax_record("size", b"3") + b"\x00" * 7
    data = (_ext(recs) + header(b"short", 0) + padded(b"abc")
            + _ext(pax_record("linkpath", b"t" * 150)) + header(b"s", 0, b"2", linkname=b"x")
            + _ext(pax_record("path", b"ignored"), b"g") + member(b"g", b"")
            + header(b"././@LongLink", 11, b"K") + padded(b"gnu/target\x00") + header(b"h", 0, b"1", linkname=b"x")
            + end_of_archive())
    a, s, g, h = _members(data)
    assert (a.name, a.size) == ("long/" + "p" * 200, 3)
    assert (s.name, s.linkname) == ("s", "t" * 150)
    assert g.name == "g"
    assert (h.name, h.linkname) == ("h", "gnu/target")


def test_gnu_long_name_cut_at_first_nul_and_cap() -> None:
    long = b"gnu/" + b"n" * 20
    data = header(b"././@LongLink", len(long) + 12, b"L") + padded(long + b"\x00junk\x00junk2") + member(b"x", b"")
    assert _members(data + end_of_archive())[0].name == long.decode()
    exact = b"n" * MAX_NAME_BYTES
    data = header(b"././@LongLink", len(exact), b"L") + padded(exact) + member(b"x", b"")
    assert _members(data + end_of_archive())[0].name == exact.decode()
    over = exact + b"n"
    with pytest.raises(UnsafeArchiveError, match="is 1025 bytes long, over the 1024-byte cap"):
        _members(header(b"././@LongLink", len(over), b"L") + padded(over) + member(b"x", b""))


def test_name_not_utf8_message() -> None:
    raw = b"\xff" * 90
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"is not UTF-8 ({raw[:60]!r})")):
        _members(header(b"././@LongLink", len(raw), b"L") + padded(raw) + member(b"x", b""))


def test_nul_in_pax_path() -> None:
    name = "x" * 70 + "\x00"
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"bundle member {name[:60]!r} has a NUL")):
        _members(_ext(pax_record("path", name.encode())) + member(b"a", b""))


def test_pax_path_cap_message() -> None:
    with pytest.raises(UnsafeArchiveError, match="is 1025 bytes long"):
        _members(_ext(pax_record("path", b"p" * 1025)) + member(b"a", b""))


def test_types_and_directories() -> None:
    data = (header(b"d/", 0, b"\x00") + header(b"f/", 0, b"0") + header(b"/", 0, b"5") + header(b"aX/", 0, b"5")
            + header(b"e/", 0, b"5") + header(b"sym", 10, b"2", linkname=b"t") + member(b"z", b"zz")
            + end_of_archive())
    ms = _members(data)
    assert [(m.name, m.type) for m in ms] == [("d", b"5"), ("f/", b"0"), ("/", b"5"), ("aX", b"5"), ("e", b"5"),
                                             ("sym", b"2"), ("z", b"0")]
    assert ms[-1].size == 2


@pytest.mark.parametrize(("records", "message"), [
    (b"123", "record at byte 0 has no length"),
    (b"000000000025 path=abcdef\n", "record at byte 0 has no length"),
    (b"6 a=bcX\n", "record at byte 0 has a wrong length"),
    (pax_record("a", b"b") + b"0 x=y\n", "record at byte 6 has a wrong length"),
    (b"3 \n", "record at byte 0 has no key=value"),
    (b"5 =v\n", "record at byte 0 has no key=value"),
    (b"6 abc\n", "record at byte 0 has no key=value"),
    (pax_record("GNU.sparse.map", b"1"), "the archive holds a sparse file; bundles may only hold regular files"),
    (b"7 a=\xff\xfe\n", "record at byte 0 is not UTF-8"),
])
def test_pax_refusals(records: bytes, message: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=re.escape(message)) as caught:
        _parse_pax(records)
    assert str(caught.value).startswith(("malformed PAX extended header (", "the archive holds a sparse file"))


def test_pax_records_parse() -> None:
    assert _parse_pax(pax_record("a", b"b c") + pax_record("k", b"b=c")) == {"a": "b c", "k": "b=c"}
    assert _parse_pax(pax_record("a", b"1") + b"\x00\x01") == {"a": "1"}


def test_pax_size_limits() -> None:
    ok = b"0" * 19 + b"5"
    (m,) = _members(_ext(pax_record("size", ok)) + header(b"a", 0) + padded(b"12345") + end_of_archive())
    assert m.size == 5
    value = "0" * 40
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"(size {value[:30]!r})")):
        _members(_ext(pax_record("size", value.encode())) + header(b"a", 0))
    with pytest.raises(UnsafeArchiveError, match="malformed PAX"):
        _members(_ext(pax_record("size", b"0" * 21)) + header(b"a", 0))
