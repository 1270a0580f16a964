"""Binary deltas between two versions of a bundle: zstd with the old bundle as a raw-content dictionary.

This is what ``zstd --patch-from=old new`` does: the old bytes are the dictionary, so every byte of the
new version that also occurs in the old one becomes a back-reference, and long-distance matching finds
them across a whole model file. A retrain that changes only the last layers leaves most of the weights
byte-identical, and the delta carries little more than the changed tensors and the new manifest.

Deltas are made over the **uncompressed tar streams** of the two bundles, never over the files: a
bundle is usually a zstd-compressed tar, and after the first changed byte a compressed stream shares
almost nothing with its predecessor (``scripts/bench_delta.py`` measures both). Applying a delta
therefore yields the new version's tar stream; the fleet signs that stream's sha256 and size into the
desired state (``tar_sha256``/``tar_size``) next to the file's, and the device checks them, then the
bundle's signature and every file hash, exactly as for a full download.

Memory: making or applying a delta holds the old and new tar streams in memory (the dictionary and
the output); :data:`MAX_DELTA_INPUT_BYTES` bounds both, above it a device downloads the full bundle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgeml.bundle.archive import MAX_ZSTD_WINDOW_BYTES, ZSTD_MAGIC
from edgeml.errors import BundleError

# Old and new tar streams are each held whole while a delta is made or applied: beyond this, no delta.
MAX_DELTA_INPUT_BYTES = 1 << 30
DELTA_LEVEL = 19           # the fleet makes each delta once (then caches it): spend CPU for bytes
_READ_CHUNK = 1 << 20


class DeltaError(BundleError):
    """A delta cannot be made or applied (too large, not a delta, made against other bytes)."""


@dataclass(frozen=True)
class TarDigest:
    """The sha256 and size of a bundle's uncompressed tar stream (the bytes a delta rebuilds)."""

    sha256: str
    size: int


def iter_tar_stream(path: Path, *, max_bytes: int = MAX_DELTA_INPUT_BYTES) -> Iterator[bytes]:
    """The bundle's tar stream in chunks: the file itself, or its zstd content; refuses more than ``max_bytes``."""
    with open(path, "rb") as raw:
        source: BinaryIO = raw
        errors: tuple[type[Exception], ...] = (OSError,)
        if raw.read(4) == ZSTD_MAGIC:
            import zstandard

            raw.seek(0)
            source = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW_BYTES).stream_reader(
                raw, read_across_frames=True)
            errors = (OSError, zstandard.ZstdError)
        else:
            raw.seek(0)
        total = 0
        while True:
            try:
                chunk = source.read(_READ_CHUNK)
            except errors as exc:
                raise DeltaError(f"{path.name} is not a readable bundle ({exc})") from exc
            if not chunk:
                return
            total += len(chunk)
            if total > max_bytes:
                raise DeltaError(f"{path.name} holds more than {max_bytes} bytes of tar: too large for a delta")
            yield chunk


def tar_stream(path: Path, *, max_bytes: int = MAX_DELTA_INPUT_BYTES) -> bytes:
    """The bundle's whole tar stream (decompressed when the file is zstd)."""
    return b"".join(iter_tar_stream(path, max_bytes=max_bytes))


def tar_digest(path: Path) -> TarDigest:
    """sha256 and size of the bundle's tar stream, read in chunks (any size: nothing is held whole)."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_tar_stream(path, max_bytes=1 << 62):
        digest.update(chunk)
        size += len(chunk)
    return TarDigest(digest.hexdigest(), size)


def _window_log(total: int) -> int:
    """The zstd window that reaches from the end of the new bytes back to the start of the old ones."""
    import zstandard

    log = max(total - 1, 1).bit_length()
    return min(max(log, zstandard.WINDOWLOG_MIN), 31)


def make_delta(old: bytes, new: bytes, *, level: int = DELTA_LEVEL) -> bytes:
    """A zstd frame that rebuilds ``new`` given ``old`` (the two tar streams), like ``zstd --patch-from``."""
    import zstandard

    for what, data in (("old", old), ("new", new)):
        if len(data) > MAX_DELTA_INPUT_BYTES:
            raise DeltaError(f"the {what} bundle's tar stream ({len(data)} bytes) is over the "
                             f"{MAX_DELTA_INPUT_BYTES}-byte delta limit")
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(new), dict_size=len(old), window_log=_window_log(len(old) + len(new)),
        enable_ldm=True, write_content_size=True, write_checksum=True)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(new)


def apply_delta(old: bytes, delta: bytes, *, max_result_bytes: int) -> bytes:
    """Rebuild the new tar stream from ``old`` and ``delta``; never produces more than ``max_result_bytes``.

    A delta made against other bytes usually fails zstd's own checksum; one that decodes anyway is
    caught by the caller's sha256 check against the signed desired state.
    """
    import zstandard

    if max_result_bytes > MAX_DELTA_INPUT_BYTES:
        raise DeltaError(f"the new bundle ({max_result_bytes} bytes of tar) is over the delta limit")
    try:
        params = zstandard.get_frame_parameters(delta)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"not a delta (no zstd frame: {exc})") from exc
    if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise DeltaError("the delta does not declare the size of its result")
    if params.content_size > max_result_bytes:
        raise DeltaError(f"the delta would rebuild {params.content_size} bytes; the signed desired state allows "
                         f"{max_result_bytes}")
    if params.window_size > 1 << 31:
        raise DeltaError(f"the delta asks for a {params.window_size}-byte zstd window; at most 2 GiB is allowed")
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    decompressor = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=max(params.window_size, 1 << 10))
    try:
        result = decompressor.decompress(delta, max_output_size=max_result_bytes)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"the delta does not apply to the installed bundle ({exc})") from exc
    if len(result) != params.content_size:
        raise DeltaError(f"the delta rebuilt {len(result)} bytes instead of the {params.content_size} it declares")
    return result
