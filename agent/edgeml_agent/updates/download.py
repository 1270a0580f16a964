"""Resumable bundle download: HTTP Range from where the partial file ends, a size cap taken from the
signed desired state, and a minimum-speed floor so a stalled link fails instead of hanging."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from edgeml.errors import UpdateError
from edgeml.fileio import sha256_file


class TransientDownloadError(UpdateError):
    """The download stopped for a reason worth retrying (connection lost, server busy, too slow)."""


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int,
    expected_sha256: str,
    headers: dict[str, str] | None = None,
    min_bytes_per_s: float = 1024.0,
    speed_window_s: float = 10.0,
    chunk_hook: Callable[[int], None] | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Fetch ``url`` into ``dest`` (``dest.part`` while incomplete), resuming a previous partial file.

    Raises :class:`TransientDownloadError` for retryable problems and :class:`UpdateError` for fatal ones
    (oversized, wrong hash). Returns ``dest`` once its size and sha256 match the desired state.
    """
    import httpx

    part = dest.with_name(dest.name + ".part")
    if dest.exists() and sha256_file(dest) == expected_sha256:
        return dest
    have = part.stat().st_size if part.exists() else 0
    if have > expected_size:
        part.unlink()
        have = 0
    request_headers = dict(headers or {})
    if 0 < have < expected_size:
        request_headers["Range"] = f"bytes={have}-"
    try:
        with httpx.stream("GET", url, headers=request_headers, timeout=timeout_s) as response:
            if response.status_code == 416 and have == expected_size:
                pass  # we already have every byte
            elif response.status_code == 200:
                have = 0  # server ignored the Range: start over
                _stream(response, part, "wb", have, expected_size, min_bytes_per_s, speed_window_s, chunk_hook)
            elif response.status_code == 206:
                _stream(response, part, "ab", have, expected_size, min_bytes_per_s, speed_window_s, chunk_hook)
            elif response.status_code in (408, 429, 500, 502, 503, 504):
                raise TransientDownloadError(f"bundle server answered {response.status_code}")
            else:
                raise UpdateError(f"bundle download refused: HTTP {response.status_code} for {url}")
    except httpx.TransportError as exc:
        raise TransientDownloadError(f"bundle download interrupted: {exc}") from exc
    size = part.stat().st_size
    if size != expected_size:
        raise TransientDownloadError(f"bundle download ended at {size} of {expected_size} bytes")
    if sha256_file(part) != expected_sha256:
        part.unlink()
        raise UpdateError("the downloaded bundle's sha256 differs from the signed desired state (tampered or corrupt)")
    os.replace(part, dest)
    return dest


def _stream(response, part: Path, mode: str, have: int, cap: int, min_rate: float,  # type: ignore[no-untyped-def]
            window: float, hook: Callable[[int], None] | None) -> None:
    window_start, window_bytes = time.monotonic(), 0
    with open(part, mode) as f:
        for chunk in response.iter_bytes(64 << 10):
            if have + len(chunk) > cap:
                f.write(chunk[: cap - have])
                f.flush()
                os.fsync(f.fileno())
                raise UpdateError(f"the server sent more than the {cap} bytes the signed desired state allows")
            f.write(chunk)
            have += len(chunk)
            window_bytes += len(chunk)
            if hook:
                f.flush()
                hook(have)
            elapsed = time.monotonic() - window_start
            if elapsed >= window:
                if window_bytes / elapsed < min_rate:
                    f.flush()
                    os.fsync(f.fileno())
                    raise TransientDownloadError(f"download slower than {min_rate:.0f} B/s; will resume")
                window_start, window_bytes = time.monotonic(), 0
        f.flush()
        os.fsync(f.fileno())
