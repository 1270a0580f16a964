"""Low-level reading of bundle archives: tar, optionally zstd-compressed, read as a stream.

Reading is always sequential (``tarfile`` stream mode) so a bundle is never seeked, never loaded whole
into memory, and a truncated download fails as soon as the data runs out.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from edgeml.errors import TruncatedBundleError, UnsafeArchiveError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@contextmanager
def open_tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Open a bundle for sequential reading, transparently decompressing zstd."""
    try:
        raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TruncatedBundleError(f"cannot open bundle {path}: {exc.strerror}") from exc
    try:
        head = raw.read(4)
        raw.seek(0)
        stream: IO[bytes] = raw
        if head == ZSTD_MAGIC:
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed by the with below
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise TruncatedBundleError(f"{path} is not a bundle archive (tar, optionally zstd): {exc}") from exc
        with tar:
            yield tar
    finally:
        raw.close()


def safe_member_name(member: tarfile.TarInfo) -> str:
    """The member's normalised relative name, or an error naming why it is unsafe."""
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"bundle member '{name}' is a link; bundles may only hold regular files")
    if member.isdev():  # character device, block device or fifo
        raise UnsafeArchiveError(f"bundle member '{name}' is a device or fifo; bundles may only hold regular files")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"bundle member '{name}' has unsupported type {member.type!r}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchiveError(f"bundle member '{name}' has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"bundle member '{name}' contains '..'")
    normal = posixpath.normpath(name)
    if normal in (".", "") or normal.startswith("../"):
        raise UnsafeArchiveError(f"bundle member '{name}' has an invalid path")
    return normal


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    """Read a whole (small) member, refusing it when it declares more than ``limit`` bytes."""
    if member.size > limit:
        raise UnsafeArchiveError(f"bundle member '{member.name}' is {member.size} bytes, over the {limit}-byte cap")
    f = tar.extractfile(member)
    if f is None:
        raise UnsafeArchiveError(f"bundle member '{member.name}' is not a regular file")
    data = read_exactly(f, member.size, member.name)
    return data


def read_exactly(f: IO[bytes], size: int, name: str) -> bytes:
    buf = io.BytesIO()
    for chunk in iter_chunks(f, size, name):
        buf.write(chunk)
    return buf.getvalue()


def iter_chunks(f: IO[bytes], size: int, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
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
