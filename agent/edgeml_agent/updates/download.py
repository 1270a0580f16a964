"""Resumable bundle download: HTTP Range from where the partial file ends, a size cap taken from the
signed desired state, and a minimum-speed floor so a stalled link fails instead of hanging.

Where from: :func:`download_sources` lists the mirror the desired state names (no credentials) and then
the fleet's own route (with the device's token); the signed sha256 decides whether the bytes are used,
whichever server sent them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from edgeml.desired import DesiredModel
from edgeml.errors import UpdateError
from edgeml.fileio import sha256_file
from edgeml_agent.transport import HttpClient, HttpUnreachable, StreamedResponse

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what "the same server" means."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:      # a port that is not a number: no origin can equal it
        return scheme, "<invalid port>", None
    return scheme, (parts.hostname or "").lower(), port


def credentials_for(url: str, server_url: str | None, headers: Mapping[str, str]) -> dict[str, str]:
    """The device's credentials go only to the fleet it enrolled with: a mirror or CDN named in a
    desired state gets none (the signed sha256 makes any mirror safe without them)."""
    if server_url and origin(url) == origin(server_url):
        return dict(headers)
    return {}


def absolute(url: str, server_url: str | None) -> str:
    """A desired state's URL made absolute: a path is relative to the fleet the device enrolled with."""
    return url if "://" in url else f"{(server_url or '').rstrip('/')}/{url.lstrip('/')}"


def download_sources(model: DesiredModel, server_url: str | None) -> list[str]:
    """The URLs to fetch ``model``'s bundle from, in order: its ``url`` (a mirror when the fleet has one),
    then the fleet's own route (``fleet_url``) if that is another URL."""
    urls = [absolute(model.url, server_url)]
    if model.fleet_url and absolute(model.fleet_url, server_url) not in urls:
        urls.append(absolute(model.fleet_url, server_url))
    return urls


class TransientDownloadError(UpdateError):
    """The download stopped for a reason worth retrying (connection lost, server busy, too slow)."""


def download(
    http: HttpClient,
    url: str,
    dest: Path,
    *,
    expected_size: int,
    expected_sha256: str,
    headers: Mapping[str, str] | None = None,
    min_bytes_per_s: float = 1024.0,
    speed_window_s: float = 10.0,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Fetch ``url`` into ``dest`` (``dest.part`` while incomplete), resuming a previous partial file.

    ``progress(bytes on disk)`` is called after each chunk reached the file. Raises
    :class:`TransientDownloadError` for retryable problems and :class:`UpdateError` for fatal ones
    (oversized, wrong hash). Returns ``dest`` once its size and sha256 match the desired state.
    """
    part = dest.with_name(dest.name + ".part")
    if dest.exists() and sha256_file(dest) == expected_sha256:
        return dest
    have = part.stat().st_size if part.exists() else 0
    if have > expected_size:
        part.unlink()
        have = 0
    request_headers = dict(headers or {})
    if have > 0:   # every byte may be here already (a crash before the rename): the server answers 416
        request_headers["Range"] = f"bytes={have}-"
    stream = _Stream(part, expected_size, min_bytes_per_s, speed_window_s, progress)
    try:
        with http.stream(url, headers=request_headers, timeout=timeout_s) as response:
            if response.status_code == 416 and have == expected_size:
                pass  # we already have every byte
            elif response.status_code == 200:
                stream.copy(response, have=0)  # the server ignored the Range: start over
            elif response.status_code == 206:
                stream.copy(response, have=have)
            elif response.status_code in (408, 429, 500, 502, 503, 504):
                raise TransientDownloadError(f"bundle server answered {response.status_code}")
            else:
                raise UpdateError(f"bundle download refused: HTTP {response.status_code} for {url}")
    except HttpUnreachable as exc:
        raise TransientDownloadError(f"bundle download interrupted: {exc}") from exc
    size = part.stat().st_size
    if size != expected_size:
        raise TransientDownloadError(f"bundle download ended at {size} of {expected_size} bytes")
    if sha256_file(part) != expected_sha256:
        part.unlink()
        raise UpdateError("the downloaded bundle's sha256 differs from the signed desired state (tampered or corrupt)")
    os.replace(part, dest)
    return dest


class _Stream:
    """Copies a response body onto the partial file: size cap, speed floor, progress after each chunk."""

    def __init__(self, part: Path, cap: int, min_rate: float, window: float,
                 progress: Callable[[int], None] | None) -> None:
        self.part, self.cap, self.min_rate, self.window, self.progress = part, cap, min_rate, window, progress

    def copy(self, response: StreamedResponse, *, have: int) -> None:
        window_start, window_bytes = time.monotonic(), 0
        with open(self.part, "ab" if have else "wb") as f:
            try:
                # as the bytes arrive, not in fixed chunks: a cut connection keeps every byte it delivered
                for chunk in response.iter_bytes():
                    if have + len(chunk) > self.cap:
                        f.write(chunk[: self.cap - have])
                        raise UpdateError(f"the server sent more than the {self.cap} bytes the signed desired "
                                          "state allows")
                    f.write(chunk)
                    have += len(chunk)
                    window_bytes += len(chunk)
                    if self.progress is not None:
                        f.flush()
                        self.progress(have)
                    elapsed = time.monotonic() - window_start
                    if elapsed >= self.window:
                        if window_bytes / elapsed < self.min_rate:
                            raise TransientDownloadError(f"download slower than {self.min_rate:.0f} B/s; will resume")
                        window_start, window_bytes = time.monotonic(), 0
            finally:   # whatever arrived stays on disk for the next attempt to resume from
                f.flush()
                os.fsync(f.fileno())
