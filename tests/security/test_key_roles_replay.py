"""A replayed older desired state cannot undo a key decision: once a device accepted a document that
revoked a builder key, an older (validly signed) document that still listed it is refused as a replay,
even though neither document changes which model runs. In-process agent with its update component."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeml.bundle import SigningKey, sha256_file
from edgeml.desired import sign_desired
from edgeml.keyroles import trust_section
from tests.updates.helpers import DEVICE
from tests.updates.test_machine_inprocess import Rig


@pytest.fixture
def rig(tmp_path: Path, signing_key: SigningKey) -> Iterator[Rig]:
    r = Rig(tmp_path, signing_key, SigningKey.generate())
    yield r
    r.close()


def _until(what: str, condition: Callable[[], Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_older_document_cannot_bring_back_a_revoked_key(rig: Rig) -> None:
    leaked = SigningKey.generate()
    v1 = rig.bundles["1.0.0"]
    now = time.time()

    def doc(serial: int, revoked: list[str]) -> bytes:   # runs what already runs: only the keys change
        return sign_desired({"device": DEVICE, "issued": now, "expires": now + 600, "serial": serial,
                             "models": [{"name": "m", "version": "1.0.0", "sha256": sha256_file(v1),
                                         "size": v1.stat().st_size, "url": rig.server.url(v1.name)}],
                             "probation": {}, "rollout": None,
                             "trust": trust_section([rig.key.public_pem().decode(), leaked.public_pem().decode()],
                                                    revoked)}, rig.fleet_key)

    bundles = rig.agent.services.trust.bundles
    before_revocation, revocation = doc(1000, []), doc(2000, [leaked.key_id])
    rig.updates.offer(before_revocation)
    _until("the leaked key to be a signer", lambda: leaked.key_id in bundles)
    rig.updates.offer(revocation)
    _until("the leaked key to be revoked", lambda: leaked.key_id not in bundles)
    # when the older document is replayed
    rig.updates.offer(before_revocation)
    _until("the replay to be refused", lambda: "replay refused" in (rig.updates.last_refusal or ""))
    # then the key stays revoked and the model keeps serving
    assert leaked.key_id not in bundles and rig.key.key_id in bundles
    assert rig.serving() == "1.0.0"
