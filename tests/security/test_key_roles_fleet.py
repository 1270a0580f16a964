"""The fleet's side of key roles, on SQLite and PostgreSQL: what a device is handed and what the API
refuses. The desired state a device fetches carries the bundle signers and revocations (signed by the
fleet key); a revoked key can never be trusted again; the fleet key can never be a bundle signer; a
rotated fleet key reaches a device that knows only the old one through the signed rotation chain."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edgeml.bundle import SigningKey, TrustStore, load_public_key
from edgeml.desired import parse_desired
from edgeml.errors import DesiredStateError
from tests.fleet.conftest import Fleet, db_url, fleet  # noqa: F401 - the parametrised SQLite/PostgreSQL fleet
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


def _desired(server: Fleet, token: str, newer_than: int = -1, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = server.http.get("/v1/devices/me/desired", headers=server.auth(token))
        if r.status_code == 200 and json.loads(json.loads(r.content)["payload"])["serial"] > newer_than:
            return bytes(r.content)
        time.sleep(0.2)
    raise AssertionError("no (new) desired state for the device")


def _push(server: Fleet, path: Path) -> Any:
    return server.call("POST", "/v1/bundles", content=path.read_bytes(),
                      headers={"Content-Type": "application/octet-stream"})


def test_revocation_and_rotation_reach_the_device_signed(fleet: Fleet, tmp_path: Path) -> None:  # noqa: F811
    builder, leaked = SigningKey.generate(), SigningKey.generate()
    fleet.trust(builder)
    fleet.trust(leaked, name="leaky")
    device = fleet.enroll(group="cams")
    token, device_id = device["api_token"], device["device_id"]
    first_fleet_key = TrustStore([load_public_key(device["desired_key_pem"].encode())])
    bundle = _push(fleet, make_bundle(tmp_path, builder, tiny_mlp(tmp_path / "m.onnx"), version="1.0.0")).json()
    r = fleet.call("POST", "/v1/rollouts", json={"bundle": bundle["id"], "group": "cams", "observe_s": 3600})
    assert r.status_code == 201, r.text
    state = parse_desired(_desired(fleet, token), first_fleet_key, device_id=device_id)
    assert state.trust is not None and set(state.trust.signers) == {builder.key_id, leaked.key_id}

    # revoking a signer re-signs the device's document at once, naming the key as revoked
    r = fleet.call("POST", f"/v1/keys/{leaked.key_id}/revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    revoked = parse_desired(_desired(fleet, token, state.serial), first_fleet_key, device_id=device_id)
    assert revoked.trust is not None and set(revoked.trust.signers) == {builder.key_id}
    assert revoked.trust.revoked == {leaked.key_id}
    assert revoked.serial > state.serial
    # and the key can neither be trusted again nor sign an upload
    again = fleet.call("POST", "/v1/keys", json={"name": "again", "public_pem": leaked.public_pem().decode()})
    assert again.status_code == 409 and "revoked" in again.json()["detail"]
    evil = make_bundle(tmp_path / "evil.edgepkg", leaked, tiny_mlp(tmp_path / "e.onnx", seed=3), version="9.0.0")
    assert _push(fleet, evil).status_code in (400, 403, 422)
    # a key untrusted earlier can still be revoked; a fleet key or a garbage id cannot
    stray = SigningKey.generate()
    fleet.trust(stray, name="stray")
    assert fleet.call("DELETE", f"/v1/keys/{stray.key_id}").status_code == 200
    assert fleet.call("POST", f"/v1/keys/{stray.key_id}/revoke").status_code == 200
    fleet_id = next(iter(first_fleet_key))
    assert fleet.call("POST", f"/v1/keys/{fleet_id}/revoke").status_code == 400
    assert fleet.call("POST", "/v1/keys/not-a-key/revoke").status_code == 400
    # the fleet key is never a bundle signer
    as_signer = fleet.call("POST", "/v1/keys", json={"name": "fleet", "public_pem": device["desired_key_pem"]})
    assert as_signer.status_code == 400 and "one role" in as_signer.json()["detail"]

    # rotating the fleet key: a device that knows only the old key follows the signed chain
    r = fleet.call("POST", "/v1/keys/fleet/rotate")
    assert r.status_code == 200 and r.json()["reissued"] >= 1, r.text
    new_id = r.json()["key_id"]
    wire = _desired(fleet, token, revoked.serial)
    assert parse_desired(wire, first_fleet_key, device_id=device_id).key_id == new_id
    without_chain = json.dumps({k: v for k, v in json.loads(wire).items() if k != "rotations"}).encode()
    with pytest.raises(DesiredStateError, match="does not trust"):
        parse_desired(without_chain, first_fleet_key, device_id=device_id)
    roles = {(k["key_id"], k["role"], k["status"]) for k in fleet.call("GET", "/v1/keys").json()}
    assert roles == {(builder.key_id, "bundle-signer", "active"), (leaked.key_id, "bundle-signer", "revoked"),
                     (stray.key_id, "bundle-signer", "revoked"), (new_id, "fleet", "active"),
                     (fleet_id, "fleet", "retired")}
    # a new device is handed the new key directly
    assert load_public_key(fleet.enroll(group="cams")["desired_key_pem"].encode()) is not None
    mine = fleet.http.get("/v1/devices/me/keys", headers=fleet.auth(token)).json()
    assert mine == {"fleet": [new_id, fleet_id], "signers": [builder.key_id],
                    "revoked": sorted([leaked.key_id, stray.key_id])}
