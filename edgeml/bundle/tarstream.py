"""A sequential tar reader that never holds more than a fixed amount of any archive in memory.

``tarfile`` reads an extended header (PAX ``x``/``g``, GNU long name ``L``/``K``) whole, whatever size it
claims: a 33 KB zstd-compressed bundle whose first header claims 1 GiB made it allocate gigabytes
before edgeml saw a single member. A bundle is read before its signature can be checked, so this reader
parses the 512-byte headers itself and bounds everything an archive can make it hold:

* an extended header is refused when it claims more than :data:`MAX_EXTENDED_HEADER_BYTES`, before a
  byte of it is read; at most :data:`MAX_EXTENSIONS_PER_MEMBER` of them may precede one member;
* a member name is at most :data:`MAX_NAME_BYTES` bytes of UTF-8 with no NUL;
* an archive holds at most ``max_headers`` headers (extended ones included);
* member data is only ever handed out in chunks the caller asks for (see :meth:`TarStream.extractfile`);
  what the caller skips is read through in fixed-size chunks.

Only the member types a bundle can hold are read (regular files and directories). Links and device
nodes are returned so that the caller refuses them by name; every other type (sparse, multi-volume,
...) is refused here, because its data layout is not the plain one this reader knows how to skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from edgeml.errors import TruncatedBundleError, UnsafeArchiveError

BLOCK = 512
MAX_EXTENDED_HEADER_BYTES = 64 << 10
MAX_EXTENSIONS_PER_MEMBER = 8
MAX_NAME_BYTES = 1024
MAX_HEADERS = 10_000
_SKIP_CHUNK = 64 << 10

REGULAR_TYPES = (b"0", b"\x00", b"7")   # '7' (contiguous) is a regular file to every reader
DIRECTORY = b"5"
HARD_LINK, SYMLINK = b"1", b"2"
DEVICE_TYPES = (b"3", b"4", b"6")        # character device, block device, fifo
PAX_MEMBER, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
EXTENSION_TYPES = (PAX_MEMBER, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK)
_DATALESS = (DIRECTORY, HARD_LINK, SYMLINK, *DEVICE_TYPES)
_POSIX_MAGIC = b"ustar\x0000"
_HIGH = bytes(range(0x80, 0x100))


class ArchiveFormatError(TruncatedBundleError):
    """The bytes are not a well-formed tar archive (cut short, corrupt, or not tar at all)."""


@dataclass(frozen=True)
class TarMember:
    """One member as the archive declares it; the predicates match :class:`tarfile.TarInfo`'s."""

    name: str
    size: int
    type: bytes
    linkname: str = ""

    def isfile(self) -> bool:
        return self.type in REGULAR_TYPES

    isreg = isfile

    def isdir(self) -> bool:
        return self.type == DIRECTORY

    def issym(self) -> bool:
        return self.type == SYMLINK

    def islnk(self) -> bool:
        return self.type == HARD_LINK

    def ischr(self) -> bool:
        return self.type == b"3"

    def isblk(self) -> bool:
        return self.type == b"4"

    def isfifo(self) -> bool:
        return self.type == b"6"

    def isdev(self) -> bool:
        return self.type in DEVICE_TYPES


class TarStream:
    """Read ``stream`` (a tar archive, already decompressed) one member at a time.

    ``stream_errors`` are the exception types the stream raises for data it cannot deliver (a cut zstd
    frame); they, ``OSError`` and ``EOFError`` are reported as :class:`ArchiveFormatError` when they
    happen inside a header. Inside member data they reach the caller as raised, so that it can name
    the member (see ``archive.iter_chunks``).
    """

    def __init__(self, stream: IO[bytes], *, max_headers: int = MAX_HEADERS,
                 stream_errors: tuple[type[BaseException], ...] = ()) -> None:
        self._stream = stream
        self._max_headers = max_headers
        self._errors: tuple[type[BaseException], ...] = (OSError, EOFError, *stream_errors)
        self._headers = 0
        self._offset = 0           # bytes consumed so far: where the next header starts when _left == 0
        self._current: TarMember | None = None
        self._left = 0             # unread data bytes of the current member
        self._padding = 0          # zero padding after the current member's data
        self._ended = False

    # -- members ------------------------------------------------------------------------------------
    def next(self) -> TarMember | None:
        """The next member, or None at the end of the archive. Skips what is left of the previous one."""
        if self._ended:
            return None
        self._skip(self._left + self._padding)
        self._current, self._left, self._padding = None, 0, 0
        overrides: dict[str, str] = {}
        extensions = 0
        while True:
            block = self._header_block(after_extension=extensions > 0)
            if block is None:
                self._ended = True
                return None
            name, size, kind, linkname = _parse_header(block, self._offset - BLOCK)
            if kind not in EXTENSION_TYPES:
                break
            extensions += 1
            if extensions > MAX_EXTENSIONS_PER_MEMBER:
                raise UnsafeArchiveError(f"the archive chains more than {MAX_EXTENSIONS_PER_MEMBER} extended "
                                         "headers before one member")
            self._read_extension(kind, size, overrides)
        member = self._member(name, size, kind, linkname, overrides)
        self._current = member
        self._left = 0 if kind in _DATALESS else member.size
        self._padding = -self._left % BLOCK
        return member

    def extractfile(self, member: TarMember) -> _MemberData | None:
        """A reader of ``member``'s data (the member :meth:`next` returned last); None unless a file."""
        if member is not self._current:
            raise ValueError("a member's data can only be read right after next() returned it")
        return _MemberData(self) if member.isfile() else None

    def close(self) -> None:
        """Nothing to release: the stream belongs to the caller."""

    # -- internals ----------------------------------------------------------------------------------
    def _header_block(self, *, after_extension: bool) -> bytes | None:
        self._headers += 1
        if self._headers > self._max_headers:
            raise UnsafeArchiveError(f"the archive holds more than {self._max_headers} members; "
                                     "no bundle has that many")
        block = self._read_exact(BLOCK, allow_eof=not after_extension and self._offset > 0)
        if block is None:            # a clean end between members (the end-of-archive blocks are optional)
            return None
        if block == bytes(BLOCK):
            if after_extension:
                raise ArchiveFormatError(f"the archive ends right after an extended header (byte {self._offset})")
            return None
        return block

    def _read_extension(self, kind: bytes, size: int, overrides: dict[str, str]) -> None:
        if size > MAX_EXTENDED_HEADER_BYTES:
            raise UnsafeArchiveError(
                f"an extended tar header ({kind.decode('ascii')}) claims {size} bytes, over the "
                f"{MAX_EXTENDED_HEADER_BYTES}-byte cap; bundles written by edgeml never need more")
        data = self._read_exact(size + (-size % BLOCK))
        assert data is not None
        data = data[:size]
        if kind == PAX_MEMBER:
            overrides.update(_parse_pax(data))
        elif kind == PAX_GLOBAL:
            _parse_pax(data)   # checked, then ignored: a global header cannot rename or resize members
        else:
            overrides["path" if kind == GNU_LONGNAME else "linkpath"] = _decode_name(data.split(b"\x00", 1)[0])

    def _member(self, name: str, size: int, kind: bytes, linkname: str, overrides: dict[str, str]) -> TarMember:
        name = overrides.get("path", name)
        linkname = overrides.get("linkpath", linkname)
        if "size" in overrides:
            size = _pax_size(overrides["size"])
        if kind == b"\x00" and name.endswith("/"):
            kind = DIRECTORY   # a V7 directory: a plain file whose name ends in '/'
        _check_name(name)
        if kind not in REGULAR_TYPES and kind not in _DATALESS:
            raise UnsafeArchiveError(f"bundle member '{name}' has unsupported type {kind!r}")
        if kind == DIRECTORY and size:
            raise UnsafeArchiveError(f"bundle member '{name}' is a directory that claims {size} bytes of data")
        if kind == DIRECTORY and len(name) > 1:
            name = name.rstrip("/")   # as tarfile names directories: 'sub', not 'sub/'
        return TarMember(name, size, kind, linkname)

    def _read_exact(self, size: int, *, allow_eof: bool = False) -> bytes | None:
        """Exactly ``size`` bytes (``size`` is at most a header's), None on a clean EOF if allowed."""
        parts: list[bytes] = []
        got = 0
        while got < size:
            chunk = self._raw_read(size - got)
            if not chunk:
                if got == 0 and allow_eof:
                    return None
                where = "is empty" if self._offset == 0 else f"ends inside a header (byte {self._offset})"
                raise ArchiveFormatError(f"the archive {where}")
            parts.append(chunk)
            got += len(chunk)
            self._offset += len(chunk)
        return b"".join(parts)

    def _raw_read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except self._errors as exc:
            raise ArchiveFormatError(f"the archive cannot be read past byte {self._offset}: {exc}") from exc

    def _skip(self, size: int) -> None:
        while size:
            chunk = self._raw_read(min(size, _SKIP_CHUNK))
            if not chunk:
                raise ArchiveFormatError(f"the archive ends inside a member (byte {self._offset})")
            size -= len(chunk)
            self._offset += len(chunk)

    def _read_data(self, size: int) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        if not size:
            return b""
        chunk = self._stream.read(size)   # errors reach the caller as raised: it names the member
        self._left -= len(chunk)
        self._offset += len(chunk)
        return chunk


class _MemberData:
    """File-like access to the current member's data; never reads past it."""

    def __init__(self, tar: TarStream) -> None:
        self._tar = tar

    def read(self, size: int = -1) -> bytes:
        return self._tar._read_data(size)


# -- header fields -----------------------------------------------------------------------------------

def _parse_header(block: bytes, offset: int) -> tuple[str, int, bytes, str]:
    """(name, size, type, linkname) of a 512-byte header, after checking its checksum."""
    stored = block[148:156].split(b"\x00", 1)[0].strip()
    if not _is_octal(stored) or int(stored, 8) not in _checksums(block):
        what = "is not a tar archive (tar, optionally zstd)" if offset == 0 else "has a corrupt tar header"
        raise ArchiveFormatError(f"the archive {what}: header checksum mismatch at byte {offset}")
    size = _number(block[124:136], offset, "size")
    kind = block[156:157]
    raw_name = _field(block[0:100])
    if block[257:265] == _POSIX_MAGIC and block[345] != 0:
        raw_name = _field(block[345:500]) + b"/" + raw_name
    return _decode_name(raw_name), size, kind, _decode_name(_field(block[157:257]))


def _checksums(block: bytes) -> tuple[int, int]:
    """The header's checksum over unsigned bytes, and over signed ones (some old tars summed those)."""
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    return unsigned, unsigned - 256 * (len(block) - 8 - len(block[:148].translate(None, _HIGH)) -
                                       len(block[156:].translate(None, _HIGH)))


def _field(raw: bytes) -> bytes:
    return raw.split(b"\x00", 1)[0]


def _number(raw: bytes, offset: int, what: str) -> int:
    """An octal field, or GNU base-256 for values octal cannot hold (0x80 marks it; 0xff is negative)."""
    if raw[0] == 0x80:
        return int.from_bytes(raw[1:], "big")
    if raw[0] == 0xFF:
        raise ArchiveFormatError(f"the tar header at byte {offset} has a negative {what}")
    text = _field(raw).strip()
    if not text:
        return 0
    if not _is_octal(text):
        raise ArchiveFormatError(f"the tar header at byte {offset} has an invalid {what} field")
    return int(text, 8)


def _is_octal(text: bytes) -> bool:
    return bool(text) and all(0x30 <= c <= 0x37 for c in text)


def _decode_name(raw: bytes) -> str:
    if len(raw) > MAX_NAME_BYTES:
        raise UnsafeArchiveError(f"a bundle member name is {len(raw)} bytes long, over the {MAX_NAME_BYTES}-byte cap")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeArchiveError(f"a bundle member name is not UTF-8 ({raw[:60]!r})") from exc


def _check_name(name: str) -> None:
    if "\x00" in name:
        raise UnsafeArchiveError(f"bundle member {name[:60]!r} has a NUL byte in its name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeArchiveError(f"a bundle member name is over the {MAX_NAME_BYTES}-byte cap")


def _parse_pax(data: bytes) -> dict[str, str]:
    """The records of a PAX extended header ("<length> <key>=<value>\\n"), checked strictly."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 12)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise UnsafeArchiveError(f"malformed PAX extended header (record at byte {pos} has no length)")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise UnsafeArchiveError(f"malformed PAX extended header (record at byte {pos} has a wrong length)")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise UnsafeArchiveError(f"malformed PAX extended header (record at byte {pos} has no key=value)")
        if key.startswith(b"GNU.sparse."):
            raise UnsafeArchiveError("the archive holds a sparse file; bundles may only hold regular files")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeArchiveError(f"malformed PAX extended header (record at byte {pos} is not UTF-8)") from exc
        pos = end
    if "path" in records:
        _decode_name(records["path"].encode("utf-8"))   # the name cap applies to PAX names too
    return records


def _pax_size(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise UnsafeArchiveError(f"malformed PAX extended header (size {value[:30]!r})")
    return int(value)
