"""Unit tests of the key-role documents and the device's split trust store: each role checks only its
own documents, the fleet key's rotation chain, the trust section (signers, revocations), the migration
of an old single ``trusted/`` directory, and where the device's credentials may go."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edgeml.bundle import SigningKey, TrustStore
from edgeml.bundle.keys import key_id
from edgeml.desired import parse_desired, sign_desired
from edgeml.errors import DesiredStateError, SignatureError
from edgeml.keyroles import follow_rotations, parse_trust_section, sign_rotation, trust_section
from edgeml_agent.store import Store
from edgeml_agent.trust import DeviceTrust
from edgeml_agent.updates.download import credentials_for
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

DEVICE = "dev-1"


def _doc(key: SigningKey, *, serial: int = 1, trust: dict[str, Any] | None = None,
         rotations: list[dict[str, str]] | None = None) -> bytes:
    now = time.time()
    body: dict[str, Any] = {"device": DEVICE, "issued": now, "expires": now + 60, "serial": serial, "models": [],
                            "probation": {}, "rollout": None}
    if trust is not None:
        body["trust"] = trust
    return sign_desired(body, key, rotations)


def _pub(tmp: Path, key: SigningKey) -> Path:
    path = tmp / f"{key.key_id}.pub"
    path.write_bytes(key.public_pem())
    return path


def test_a_desired_state_is_checked_only_against_the_fleet_role() -> None:
    fleet, builder = SigningKey.generate(), SigningKey.generate()
    trusted_fleet = TrustStore([fleet.public_key])
    assert parse_desired(_doc(fleet), trusted_fleet, device_id=DEVICE).key_id == fleet.key_id
    with pytest.raises(DesiredStateError, match="does not trust as its fleet key"):
        parse_desired(_doc(builder), trusted_fleet, device_id=DEVICE)


def test_a_rotation_chain_carries_a_device_from_its_key_to_the_current_one() -> None:
    k1, k2, k3 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    chain = [sign_rotation(k1, k2), sign_rotation(k2, k3)]
    # a device that was offline through both rotations still trusts only k1
    state = parse_desired(_doc(k3, rotations=chain), TrustStore([k1.public_key]), device_id=DEVICE)
    assert state.key_id == k3.key_id and state.fleet_key is not None and key_id(state.fleet_key) == k3.key_id
    # a device already on k2 skips the link it walked past
    assert set(follow_rotations({k2.key_id: k2.public_key}, chain)) == {k2.key_id, k3.key_id}
    # without the chain the successor is a stranger
    with pytest.raises(DesiredStateError, match="does not trust"):
        parse_desired(_doc(k3), TrustStore([k1.public_key]), device_id=DEVICE)


def test_a_rotation_not_signed_by_a_trusted_key_moves_nothing() -> None:
    k1, attacker = SigningKey.generate(), SigningKey.generate()
    forged = sign_rotation(attacker, attacker)          # a key vouching for itself
    with pytest.raises(DesiredStateError, match="does not trust"):
        parse_desired(_doc(attacker, rotations=[forged]), TrustStore([k1.public_key]), device_id=DEVICE)


def test_an_altered_rotation_statement_is_refused() -> None:
    k1, k2, attacker = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    statement = sign_rotation(k1, k2)
    payload = json.loads(statement["payload"])
    payload["next"], payload["next_pem"] = attacker.key_id, attacker.public_pem().decode()
    altered = {**statement, "payload": json.dumps(payload)}
    with pytest.raises(DesiredStateError, match="signature does not match"):
        parse_desired(_doc(attacker, rotations=[altered]), TrustStore([k1.public_key]), device_id=DEVICE)
    mismatched = sign_rotation(k1, k2)
    doc = json.loads(mismatched["payload"])
    doc["next_pem"] = attacker.public_pem().decode()          # re-signed by k1, but the id names another key
    payload_text = json.dumps(doc)
    import base64
    forged = {"payload": payload_text, "key_id": k1.key_id,
              "signature": base64.b64encode(k1.sign(payload_text.encode())).decode()}
    with pytest.raises(DesiredStateError, match="does not match its key id"):
        follow_rotations({k1.key_id: k1.public_key}, [forged])


def test_the_trust_section_lists_signers_and_revocations() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    section = parse_trust_section(trust_section([a.public_pem().decode(), b.public_pem().decode()], [b.key_id]))
    assert section is not None
    assert set(section.signers) == {a.key_id} and section.revoked == {b.key_id}   # revoked wins over listed
    assert parse_trust_section(None) is None
    with pytest.raises(DesiredStateError, match="trust section"):
        parse_trust_section({"signers": "not a list"})


def test_migration_splits_an_old_trusted_directory_by_role(tmp_path: Path) -> None:
    fleet, builder = SigningKey.generate(), SigningKey.generate()
    data = tmp_path / "agent"
    (data / "trusted").mkdir(parents=True)
    _pub(data / "trusted", fleet)
    _pub(data / "trusted", builder)
    # the key that signed the last accepted desired state is the fleet key
    (data / "updates").mkdir()
    (data / "updates" / "state.json").write_text(json.dumps({"desired": _doc(fleet).decode()}))
    trust = DeviceTrust(data, [data / "trusted"])
    assert set(trust.fleet) == {fleet.key_id} and set(trust.bundles) == {builder.key_id}
    assert not list((data / "trusted").glob("*.pub"))
    assert DeviceTrust(data, [data / "trusted"]).fleet.keys() == trust.fleet.keys()   # idempotent


def test_migration_asks_the_enrolled_fleet_which_key_is_its_fleet_key(tmp_path: Path) -> None:
    fleet, builder, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    data = tmp_path / "agent"
    (data / "trusted").mkdir(parents=True)
    _pub(data / "trusted", fleet)
    _pub(data / "trusted", builder)
    # the answer classifies keys the device holds; a key id it does not hold is never trusted from it
    trust = DeviceTrust(data, ask_fleet=lambda: {fleet.key_id, stranger.key_id})
    assert set(trust.fleet) == {fleet.key_id} and set(trust.bundles) == {builder.key_id}


def test_a_fleet_key_in_the_configs_trusted_keys_takes_the_fleet_role_only(tmp_path: Path) -> None:
    fleet, builder = SigningKey.generate(), SigningKey.generate()
    local = tmp_path / "operator-keys"
    local.mkdir()
    _pub(local, fleet)
    _pub(local, builder)
    trust = DeviceTrust(tmp_path / "agent", [local], ask_fleet=lambda: {fleet.key_id})
    assert set(trust.fleet) == {fleet.key_id} and set(trust.bundles) == {builder.key_id}


def test_migration_without_a_known_fleet_key_gives_the_fleet_role_to_nobody(tmp_path: Path) -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    data = tmp_path / "agent"
    (data / "trusted").mkdir(parents=True)
    _pub(data / "trusted", a)
    _pub(data / "trusted", b)
    trust = DeviceTrust(data)
    assert len(trust.fleet) == 0 and set(trust.bundles) == {a.key_id, b.key_id}


def test_a_key_never_holds_both_roles_even_when_the_config_lists_it(tmp_path: Path) -> None:
    fleet, builder = SigningKey.generate(), SigningKey.generate()
    data, local = tmp_path / "agent", tmp_path / "operator-keys"
    local.mkdir()
    _pub(local, fleet)
    _pub(local, builder)
    (data / "trusted" / "fleet").mkdir(parents=True)
    _pub(data / "trusted" / "fleet", fleet)
    trust = DeviceTrust(data, [local])
    assert set(trust.bundles) == {builder.key_id} and set(trust.fleet) == {fleet.key_id}


def test_adopting_a_revocation_refuses_an_installed_bundle_at_its_next_load(tmp_path: Path) -> None:
    fleet, good, leaked = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    data = tmp_path / "agent"
    (data / "trusted" / "fleet").mkdir(parents=True)
    _pub(data / "trusted" / "fleet", fleet)
    trust = DeviceTrust(data, [_pub(tmp_path, leaked)])     # even a key the operator's config lists
    store = Store(data, trust.bundles)
    store.install(make_bundle(tmp_path, leaked, tiny_mlp(tmp_path / "m.onnx"), version="1.0.0"))
    state = parse_desired(_doc(fleet, trust=trust_section([good.public_pem().decode()], [leaked.key_id])),
                          trust.fleet, device_id=DEVICE)
    trust.adopt(state)
    assert set(trust.bundles) == {good.key_id}
    with pytest.raises(SignatureError, match="not trusted"):
        store.open("m")
    # the revocation survives a restart
    assert set(DeviceTrust(data, [tmp_path / f"{leaked.key_id}.pub"]).bundles) == {good.key_id}


def test_adopting_a_rotated_fleet_key_retires_the_old_one(tmp_path: Path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    data = tmp_path / "agent"
    (data / "trusted" / "fleet").mkdir(parents=True)
    _pub(data / "trusted" / "fleet", old)
    trust = DeviceTrust(data)
    trust.adopt(parse_desired(_doc(new, rotations=[sign_rotation(old, new)]), trust.fleet, device_id=DEVICE))
    assert set(trust.fleet) == {new.key_id}
    with pytest.raises(DesiredStateError, match="does not trust"):
        parse_desired(_doc(old, serial=2), trust.fleet, device_id=DEVICE)


@pytest.mark.parametrize(("url", "sent"), [
    ("http://fleet.example:8480/v1/bundles/x/download", True),
    ("HTTP://FLEET.example:8480/v1/bundles/x/download", True),
    ("http://fleet.example:8481/v1/bundles/x/download", False),      # another port
    ("https://fleet.example:8480/v1/bundles/x/download", False),     # another scheme
    ("http://cdn.example/x.edgepkg", False),
    ("http://fleet.example:8480@evil.example/x", False),             # userinfo trick
    ("http://fleet.example:99999999/x", False),
])
def test_credentials_go_only_to_the_fleets_origin(url: str, sent: bool) -> None:
    headers = {"Authorization": "Bearer t"}
    assert (credentials_for(url, "http://fleet.example:8480", headers) == headers) is sent
    assert credentials_for("https://fleet.example/x", "https://fleet.example:443", headers) == headers
