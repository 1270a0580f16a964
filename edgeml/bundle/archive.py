"""Low-level reading of bundle archives: tar, optionally zstd-compressed, read as a stream.

Reading is always sequential (:class:`~edgeml.bundle.tarstream.TarStream`), so a bundle is never
seeked, never loaded whole into memory, and a truncated download fails as soon as the data runs out.
The reader bounds every header; this module adds the rules for names (:func:`safe_member_name`,
:func:`check_bundle_paths`) and reads members in bounded chunks.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from edgeml.bundle.tarstream import TarMember, TarStream
from edgeml.errors import ManifestError, TruncatedBundleError, UnsafeArchiveError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# The largest zstd window a bundle may use (the zstd default limit, which `zstd --long` stays within):
# the decompressor's buffer grows up to it, so it is part of the memory bound.
MAX_ZSTD_WINDOW_BYTES = 1 << 27
RESERVED_NAMES = ("manifest.json", "manifest.sig")


class Readable(Protocol):
    """What member data is read from: a member of a :class:`TarStream` (or any binary file)."""

    def read(self, size: int = -1, /) -> bytes: ...


@contextmanager
def open_tar_stream(path: Path) -> Iterator[TarStream]:
    """Open a bundle for sequential reading, transparently decompressing zstd."""
    try:
        raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TruncatedBundleError(f"cannot open bundle {path}: {exc.strerror}") from exc
    try:
        head = raw.read(4)
        raw.seek(0)
        if head == ZSTD_MAGIC:
            import zstandard

            decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW_BYTES)
            stream = decompressor.stream_reader(raw, read_across_frames=True)
            yield TarStream(stream, stream_errors=(zstandard.ZstdError,))
        else:
            yield TarStream(raw)
    finally:
        raw.close()


def check_bundle_paths(paths: Iterable[str]) -> None:
    """Refuse a manifest's file list that could not be unpacked as listed.

    Every path must be a normalised relative name (what :func:`safe_member_name` makes of a member),
    none may repeat or take a reserved name, and no file may sit where another path needs a directory
    (``sub`` and ``sub/x``). Checked with the listed names only, so it needs no more memory than the
    manifest.
    """
    listed = set(RESERVED_NAMES)
    for path in paths:
        if path in listed:
            what = "is reserved for the bundle's own header" if path in RESERVED_NAMES else "is listed twice"
            raise ManifestError(f"manifest 'files': '{path}' {what}")
        problem = _path_problem(path) or ("is not in normal form" if posixpath.normpath(path) != path else None)
        if problem:
            raise ManifestError(f"manifest 'files': '{path}' {problem}")
        listed.add(path)
    for path in listed:
        parent = _file_among_parents(path, listed)
        if parent is not None:
            raise ManifestError(f"manifest 'files': '{path}' needs '{parent}' to be a directory, but it is a file")


def check_directory_member(name: str, files: set[str]) -> None:
    """A directory member must not take the place of a file (``files`` holds the reserved names too)."""
    if name in files:
        raise UnsafeArchiveError(f"bundle member '{name}' is a directory, but the bundle holds a file of that name")
    parent = _file_among_parents(name, files)
    if parent is not None:
        raise UnsafeArchiveError(f"bundle member '{name}' lies below '{parent}', which is a file")


def _file_among_parents(path: str, files: set[str]) -> str | None:
    cut = path.find("/")
    while cut != -1:
        if path[:cut] in files:
            return path[:cut]
        cut = path.find("/", cut + 1)
    return None


def _path_problem(name: str) -> str | None:
    """Why ``name`` cannot be a path inside a bundle directory, or None when it can."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        return "has an absolute path"
    if ".." in name.split("/"):
        return "contains '..'"
    normal = posixpath.normpath(name)
    if normal in (".", "") or normal.startswith("../"):
        return "has an invalid path"
    return None


def safe_member_name(member: TarMember | tarfile.TarInfo) -> str:
    """The member's normalised relative name, or an error naming why it is unsafe."""
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"bundle member '{name}' is a link; bundles may only hold regular files")
    if member.isdev():  # character device, block device or fifo
        raise UnsafeArchiveError(f"bundle member '{name}' is a device or fifo; bundles may only hold regular files")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"bundle member '{name}' has unsupported type {member.type!r}")
    problem = _path_problem(name)
    if problem:
        raise UnsafeArchiveError(f"bundle member '{name}' {problem}")
    return posixpath.normpath(name)


def read_member(tar: TarStream, member: TarMember, limit: int) -> bytes:
    """Read a whole (small) member, refusing it when it declares more than ``limit`` bytes."""
    if member.size > limit:
        raise UnsafeArchiveError(f"bundle member '{member.name}' is {member.size} bytes, over the {limit}-byte cap")
    f = tar.extractfile(member)
    if f is None:
        raise UnsafeArchiveError(f"bundle member '{member.name}' is not a regular file")
    data = read_exactly(f, member.size, member.name)
    return data


def read_exactly(f: Readable, size: int, name: str) -> bytes:
    buf = io.BytesIO()
    for chunk in iter_chunks(f, size, name):
        buf.write(chunk)
    return buf.getvalue()


def iter_chunks(f: Readable, size: int, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the member's bytes, turning a short read into :class:`TruncatedBundleError`."""
    left = size
    while left:
        try:
            chunk = f.read(min(chunk_size, left))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise TruncatedBundleError(f"bundle ends inside member '{name}' (truncated download?): {exc}") from exc
        except Exception as exc:  # zstandard raises its own ZstdError for cut frames
            if type(exc).__module__.startswith("zstandard") or "zstd" in type(exc).__name__.lower():
                raise TruncatedBundleError(f"bundle ends inside member '{name}' (truncated download?): {exc}") from exc
            raise
        if not chunk:
            raise TruncatedBundleError(f"bundle ends inside member '{name}' (truncated download?)")
        left -= len(chunk)
        yield chunk
