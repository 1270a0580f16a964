"""Resumable bundle download in a real (in-process) agent against a real HTTP server that misbehaves:
a cut connection is resumed with ``Range`` from the bytes already on disk, and a server that ignores
``Range`` (answers 200 with the whole body) makes the agent start over from byte 0 — never append.
Every outgoing request passes through the agent's injectable HTTP client."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey, load_unpacked
from edgeml_agent.transport import HttpxClient, StreamedResponse
from tests.updates.helpers import desired
from tests.updates.test_machine_inprocess import Rig


@pytest.fixture
def rig(tmp_path: Path, signing_key: SigningKey) -> Iterator[Rig]:
    r = Rig(tmp_path, signing_key, SigningKey.generate(), targets=("x86-cpu",))
    yield r
    r.close()


def _bundle_requests(rig: Rig, name: str) -> list[str | None]:
    return [rng for path, rng in rig.server.requests if path == f"/{name}"]


def _committed_and_intact(rig: Rig) -> None:
    result = rig.wait_idle()
    assert result["committed"] == {"m": "2.0.0"}, result
    assert rig.serving() == "2.0.0"
    load_unpacked(rig.data / "versions" / "m" / "2.0.0", rig.agent.trust)   # every hash matches
    assert not list((rig.data / "updates" / "downloads").glob("*"))        # nothing left over


def test_a_cut_connection_is_resumed_with_range_from_the_bytes_on_disk(rig: Rig) -> None:
    bundle = rig.bundles["2.0.0"]
    size = bundle.stat().st_size
    rig.server.plan = ["truncate"]          # the first answer stops at half the body and closes
    rig.offer("2.0.0")
    _committed_and_intact(rig)
    assert _bundle_requests(rig, bundle.name) == [None, f"bytes={size // 2}-"]
    assert rig.server.bytes_sent == size    # each byte crossed the wire once


def test_a_server_that_ignores_range_makes_the_agent_start_over(rig: Rig) -> None:
    bundle = rig.bundles["2.0.0"]
    size = bundle.stat().st_size
    rig.server.plan = ["truncate", "ignore-range"]   # cut, then a 200 with the whole body to a Range request
    rig.offer("2.0.0")
    _committed_and_intact(rig)
    assert _bundle_requests(rig, bundle.name) == [None, f"bytes={size // 2}-"]
    assert rig.server.plan == []
    assert rig.server.bytes_sent == size // 2 + size


class RecordingClient(HttpxClient):
    """The transport seam: every outgoing request of the agent passes here (then goes out for real)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def get(self, url: str, *, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        self.seen.append(("get", url, headers.get("Authorization")))
        return super().get(url, headers=headers, timeout=timeout)

    @contextmanager
    def stream(self, url: str, *, headers: Mapping[str, str], timeout: float) -> Iterator[StreamedResponse]:
        self.seen.append(("stream", url, headers.get("Range")))
        with super().stream(url, headers=headers, timeout=timeout) as response:
            yield response


def test_polling_and_downloads_go_through_the_injected_client(tmp_path: Path, signing_key: SigningKey) -> None:
    client = RecordingClient()
    rig = Rig(tmp_path, signing_key, SigningKey.generate(), poll_interval_s=0.2, http=client)
    try:
        bundle = rig.bundles["2.0.0"]
        rig.server.desired = desired(rig.fleet_key, bundle, rig.server.url(bundle.name), version="2.0.0")
        _committed_and_intact(rig)   # found by polling (nothing was offered directly), then downloaded
        polls = [s for s in client.seen if s[0] == "get"]
        assert polls and polls[0] == ("get", f"{rig.server.base_url}/v1/devices/me/desired",
                                      "Bearer device-token-for-tests")
        assert ("stream", rig.server.url(bundle.name), None) in client.seen
    finally:
        rig.close()
