"""Bundles from a mirror: a real in-process agent, a real static HTTP server as the mirror (any static
server or object store will do: the signed sha256 is what makes it safe) and another as the fleet. The
mirror never receives the device's token; a tampered mirror file is refused and the fleet's copy used."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey
from edgeml.desired import sign_desired
from edgeml.fileio import sha256_file
from tests.support.bundle_server import BundleServer
from tests.updates.helpers import DEVICE
from tests.updates.test_machine_inprocess import Rig

TOKEN = "Bearer device-token-for-tests"   # what tests.updates.helpers.write_credentials gives the device


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, dict[str, Path]]:
    from tests.updates.helpers import versions

    key = SigningKey.generate()
    return key, versions(tmp_path_factory.mktemp("versions"), key)


@pytest.fixture
def rig(tmp_path: Path, built: tuple[SigningKey, dict[str, Path]]) -> Iterator[Rig]:
    r = Rig(tmp_path, built[0], SigningKey.generate(), targets=("x86-cpu",), bundles=built[1])
    yield r
    r.close()


@pytest.fixture
def mirror(tmp_path: Path, built: tuple[SigningKey, dict[str, Path]]) -> Iterator[BundleServer]:
    root = tmp_path / "mirror"
    (root / "m").mkdir(parents=True)
    shutil.copy(built[1]["2.0.0"], root / "m" / "2.0.0.edgepkg")   # the export-mirror layout
    with BundleServer(root) as server:
        yield server


def _offer_via_mirror(rig: Rig, mirror: BundleServer) -> None:
    bundle = rig.bundles["2.0.0"]
    now = time.time()
    rig.updates.offer(sign_desired({
        "device": DEVICE, "issued": now, "expires": now + 600, "serial": int(now * 1000), "rollout": None,
        "probation": {"seconds": 1.0, "min_requests": 5},
        "models": [{"name": "m", "version": "2.0.0", "sha256": sha256_file(bundle), "size": bundle.stat().st_size,
                    "url": mirror.url("m/2.0.0.edgepkg"), "fleet_url": f"/{bundle.name}"}]}, rig.fleet_key))


def _fleet_bundle_requests(rig: Rig) -> list[str]:
    return [path for path, _ in rig.server.requests if path.endswith(".edgepkg")]


def test_the_bundle_comes_from_the_mirror_which_never_sees_the_token(rig: Rig, mirror: BundleServer) -> None:
    _offer_via_mirror(rig, mirror)
    result = rig.wait_idle()
    assert result["committed"] == {"m": "2.0.0"}, result
    assert [p for p, _ in mirror.requests] == ["/m/2.0.0.edgepkg"]
    assert mirror.authorization == [None]
    assert _fleet_bundle_requests(rig) == []        # the fleet served no bundle bytes


def test_a_tampered_mirror_file_is_refused_and_the_fleets_copy_installed(rig: Rig, mirror: BundleServer) -> None:
    tampered = mirror.directory / "m" / "2.0.0.edgepkg"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    _offer_via_mirror(rig, mirror)
    result = rig.wait_idle()
    assert result["committed"] == {"m": "2.0.0"}, result
    assert rig.serving() == "2.0.0"
    assert mirror.requests and all(a is None for a in mirror.authorization)
    fleet = [(p, a) for (p, _), a in zip(rig.server.requests, rig.server.authorization, strict=True)
             if p.endswith(".edgepkg")]
    assert fleet == [(f"/{rig.bundles['2.0.0'].name}", TOKEN)]   # the fallback, with the token
    installed = rig.data / "updates" / "installed" / "m" / "2.0.0.edgepkg"
    assert sha256_file(installed) == sha256_file(rig.bundles["2.0.0"])   # the fleet's bytes, kept for a delta
