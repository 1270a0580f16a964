"""The device's bearer token goes only to the fleet it enrolled with: a desired state (validly signed by
the fleet key) that names a mirror or CDN for the bundle gets the bundle fetched from there WITHOUT
credentials — the signed sha256 is what makes any mirror safe, not a token. Real fleet server, real
enrolled agent, a second HTTP server that records the headers it receives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeml.bundle import SigningKey, sha256_file
from edgeml.desired import sign_desired
from edgeml.fleet.broker import service_credentials
from edgeml.fleet.rollouts.desired_docs import fleet_signing_key
from edgeml.fleet.store import Store
from edgeml.protocol import desired_topic
from tests.fleet.mqtt_checks import connect
from tests.fleet.rollouts.real_fleet import RealFleet, real_fleet, wait_for
from tests.support.bundle_server import BundleServer
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("origin")
    key = SigningKey.generate()
    out = tmp / "bundles"
    out.mkdir()
    return tmp, key, {
        "org@1": make_bundle(out, key, tiny_mlp(tmp / "v1.onnx", seed=0), name="org", version="1.0.0"),
        "org@2": make_bundle(out, key, tiny_mlp(tmp / "v2.onnx", seed=1), name="org", version="2.0.0"),
        "own@1": make_bundle(out, key, tiny_mlp(tmp / "v1.onnx", seed=0), name="own", version="1.0.0"),
        "own@2": make_bundle(out, key, tiny_mlp(tmp / "v2.onnx", seed=1), name="own", version="2.0.0"),
    }


@pytest.fixture(scope="module")
def fleet(built: tuple[Path, SigningKey, dict[str, Path]]) -> Iterator[RealFleet]:
    tmp, _, found = built
    with real_fleet(tmp, built[1], found, agents=1, installed=[found["org@1"], found["own@1"]]) as fleet:
        yield fleet


def test_a_mirror_named_in_a_signed_desired_state_gets_no_credentials(fleet: RealFleet, built: Any) -> None:
    found: dict[str, Path] = built[2]
    cam = fleet.devices[0]
    store = Store.open(f"sqlite:///{fleet.tmp / 'fleet' / 'fleet.db'}", migrate=False)
    bundle = found["org@2"]
    with BundleServer(bundle.parent) as mirror:
        # given a desired state, validly signed by the fleet key, naming a mirror on another origin
        now = time.time()
        wire = sign_desired({"device": cam.device_id, "issued": now, "expires": now + 600,
                             "serial": int(now * 1000), "rollout": None, "probation": {"seconds": 1.0},
                             "models": [{"name": "org", "version": "2.0.0", "sha256": sha256_file(bundle),
                                         "size": bundle.stat().st_size, "url": mirror.url(bundle.name)}]},
                            fleet_signing_key(store))
        service = service_credentials(store)
        peer, why = connect(fleet.server.broker_port, service.username, service.password)
        assert peer is not None, why
        peer.publish(desired_topic(cam.device_id), wire, retain=True)
        peer.close()
        # then the device installs it from the mirror (the signed sha256 vouches for the bytes)
        wait_for("org@2.0.0 served", lambda: cam.answering("org") == "2.0.0", 60, fleet.logs)
    # and the mirror never saw the device's token
    assert mirror.requests and all(a is None for a in mirror.authorization), mirror.authorization


def test_the_fleets_own_download_still_carries_the_token(fleet: RealFleet) -> None:
    # the fleet's download route needs the device token: a completed rollout proves it was sent there
    stopped = fleet.complete("own@2.0.0")
    assert stopped["state"] == "completed", stopped
    assert fleet.devices[0].serving("own") == "2.0.0"
