"""The agent's one seam for outgoing HTTP (desired-state polling, bundle downloads).

Components are handed an :class:`HttpClient`; the default, :class:`HttpxClient`, uses httpx (imported
where used, so an agent that never talks HTTP does not pay for it). Tests inject their own client to
see or shape every request without patching modules. Network failures come out of the seam as
:class:`HttpUnreachable`, never as a vendor exception, so callers classify them without importing httpx.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from edgeml.errors import FleetError


class HttpUnreachable(FleetError):
    """The request did not complete (connection refused or lost, timeout): worth retrying later."""


class StreamedResponse(Protocol):
    status_code: int

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as it arrives (each piece handed over as soon as it is read)."""


class HttpClient(Protocol):
    def get(self, url: str, *, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        """(status code, body) of a GET."""

    def stream(self, url: str, *, headers: Mapping[str, str],
               timeout: float) -> AbstractContextManager[StreamedResponse]:
        """A GET whose body is read in chunks inside the ``with`` block."""


class HttpxClient:
    def get(self, url: str, *, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        import httpx

        try:
            response = httpx.get(url, headers=dict(headers), timeout=timeout)
        except httpx.TransportError as exc:
            raise HttpUnreachable(f"{url}: {exc}") from exc
        return response.status_code, response.content

    @contextmanager
    def stream(self, url: str, *, headers: Mapping[str, str], timeout: float) -> Iterator[StreamedResponse]:
        import httpx

        try:
            with httpx.stream("GET", url, headers=dict(headers), timeout=timeout) as response:
                yield response
        except httpx.TransportError as exc:   # raised while connecting or while the body is read
            raise HttpUnreachable(f"{url}: {exc}") from exc
