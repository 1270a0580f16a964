"""The desired state an agent acts on: signed by a trusted key, addressed to this device, not expired,
not older than the last one accepted — and every field read back as the fleet wrote it."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from edgeml.bundle import SigningKey, TrustStore
from edgeml.desired import DesiredModel, parse_desired, sign_desired
from edgeml.errors import DesiredStateError, EdgeMLError

NOW = 1_800_000_000.0
SHA = "ab" * 32


def _document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device": "cam-7", "issued": NOW - 10, "expires": NOW + 3600, "serial": 12,
        "models": [{"name": "det", "version": "2.1.0", "sha256": SHA, "size": 4096,
                    "url": "https://fleet/v1/bundles/det-2.1.0.edgepkg"}],
        "probation": {"seconds": 30, "max_error_rate": 0.05},
        "rollout": "r-1",
    }
    doc.update(changes)
    return doc


def _wire(key: SigningKey, payload: dict[str, Any]) -> bytes:
    """A document signed exactly as given (sign_desired would stamp the current schema on it)."""
    text = json.dumps(payload)
    return json.dumps({"payload": text, "key_id": key.key_id,
                       "signature": base64.b64encode(key.sign(text.encode())).decode()}).encode()


def _parse(wire: bytes, trust: TrustStore, **kw: Any) -> Any:
    return parse_desired(wire, trust, device_id=kw.pop("device_id", "cam-7"), now=kw.pop("now", NOW), **kw)


def test_every_field_reads_back_as_the_fleet_signed_it(signing_key: SigningKey, trust: TrustStore) -> None:
    # given a document with two models, one of them a fleet-driven revert
    models = [*_document()["models"], {"name": "cls", "version": "1.0.0-rc.2", "sha256": "cd" * 32, "size": 77,
                                       "url": "https://fleet/cls.edgepkg", "rollback": True}]
    wire = sign_desired(_document(models=models), signing_key)
    # when the device parses it
    state = _parse(wire, trust)
    # then nothing is lost or reinterpreted
    assert (state.device, state.issued, state.expires, state.serial) == ("cam-7", NOW - 10, NOW + 3600, 12)
    assert state.models == (
        DesiredModel("det", "2.1.0", SHA, 4096, "https://fleet/v1/bundles/det-2.1.0.edgepkg", rollback=False),
        DesiredModel("cls", "1.0.0-rc.2", "cd" * 32, 77, "https://fleet/cls.edgepkg", rollback=True),
    )
    assert state.probation == {"seconds": 30, "max_error_rate": 0.05} and state.rollout == "r-1"
    assert state.raw == wire                                # kept verbatim to re-check after a restart
    assert state.model("cls") is state.models[1] and state.model("nope") is None


def test_optional_fields_have_safe_defaults(signing_key: SigningKey, trust: TrustStore) -> None:
    doc = _document()
    del doc["probation"], doc["rollout"]
    state = _parse(sign_desired(doc, signing_key), trust)
    assert state.probation == {} and state.rollout is None and state.models[0].rollback is False


def test_the_signed_payload_carries_the_schema(signing_key: SigningKey) -> None:
    outer = json.loads(sign_desired(_document(schema=7), signing_key))
    assert json.loads(outer["payload"])["schema"] == 1 and outer["key_id"] == signing_key.key_id


def test_another_schema_is_refused_by_number(signing_key: SigningKey, trust: TrustStore) -> None:
    with pytest.raises(DesiredStateError, match="schema 2 is not supported"):
        _parse(_wire(signing_key, {**_document(), "schema": 2}), trust)
    with pytest.raises(DesiredStateError, match="schema None is not supported"):
        _parse(_wire(signing_key, _document()), trust)


def test_a_key_the_device_does_not_trust_is_named(trust: TrustStore) -> None:
    stranger = SigningKey.generate()
    with pytest.raises(DesiredStateError, match=f"signed by key {stranger.key_id}, which this device does not trust"):
        _parse(sign_desired(_document(), stranger), trust)


def test_any_change_to_the_signed_bytes_is_refused(signing_key: SigningKey, trust: TrustStore) -> None:
    outer = json.loads(sign_desired(_document(), signing_key))
    for payload in (outer["payload"].replace('"serial": 12', '"serial": 99'),
                    json.dumps(json.loads(outer["payload"]))):           # same content, other bytes
        altered = json.dumps({**outer, "payload": payload}).encode()
        with pytest.raises(DesiredStateError, match=r"^the desired state's signature does not match: it was altered$"):
            _parse(altered, trust)


def test_a_signature_by_another_key_under_a_trusted_key_id_is_refused(signing_key: SigningKey,
                                                                       trust: TrustStore) -> None:
    forged = json.loads(sign_desired(_document(), SigningKey.generate()))
    forged["key_id"] = signing_key.key_id
    with pytest.raises(DesiredStateError, match="altered"):
        _parse(json.dumps(forged).encode(), trust)


@pytest.mark.parametrize("wire", [
    b"not json", b"\xff\xfe", b"[]", b'{"key_id": "k", "signature": ""}',
    b'{"payload": 5, "key_id": "k", "signature": ""}',
    b'{"payload": "{}", "key_id": "k", "signature": "***"}', b'{"payload": "{}", "key_id": "k"}',
])
def test_a_malformed_wrapper_is_refused_as_malformed(wire: bytes, trust: TrustStore) -> None:
    with pytest.raises(DesiredStateError, match="malformed"):
        _parse(wire, trust)


@pytest.mark.parametrize("change", [
    {"serial": None}, {"expires": "tomorrow"}, {"models": [{"name": "det"}]}, {"models": None},
    {"models": [{"name": "det", "version": "2.1.0", "sha256": SHA, "size": "big", "url": "u"}]},
])
def test_a_missing_or_mistyped_field_is_refused(change: dict[str, Any], signing_key: SigningKey,
                                                trust: TrustStore) -> None:
    with pytest.raises(DesiredStateError, match="misses or mistypes a field"):
        _parse(sign_desired(_document(**change), signing_key), trust)
    doc = _document()
    del doc["device"]
    with pytest.raises(DesiredStateError, match="misses or mistypes a field"):
        _parse(sign_desired(doc, signing_key), trust)


def test_a_version_that_is_not_semantic_is_refused(signing_key: SigningKey, trust: TrustStore) -> None:
    models = [{**_document()["models"][0], "version": "latest"}]
    with pytest.raises(EdgeMLError, match="'latest' is not a semantic version"):
        _parse(sign_desired(_document(models=models), signing_key), trust)


def test_a_document_for_another_device_is_refused(signing_key: SigningKey, trust: TrustStore) -> None:
    with pytest.raises(DesiredStateError, match=r"addressed to device cam-7, not to this device \(cam-8\)"):
        _parse(sign_desired(_document(), signing_key), trust, device_id="cam-8")


def test_expiry_is_exclusive_and_says_how_long_ago(signing_key: SigningKey, trust: TrustStore) -> None:
    wire = sign_desired(_document(expires=NOW), signing_key)
    assert _parse(wire, trust, now=NOW - 0.5).expires == NOW
    with pytest.raises(DesiredStateError, match="expired 0 s ago"):
        _parse(wire, trust, now=NOW)
    with pytest.raises(DesiredStateError, match="expired 90 s ago; the fleet must issue a new one"):
        _parse(wire, trust, now=NOW + 90)


def test_without_a_clock_the_current_time_is_used(signing_key: SigningKey, trust: TrustStore) -> None:
    real_now = time.time()
    fresh = sign_desired(_document(expires=real_now + 600), signing_key)
    stale = sign_desired(_document(expires=real_now - 600), signing_key)
    assert parse_desired(fresh, trust, device_id="cam-7").serial == 12
    with pytest.raises(DesiredStateError, match="expired"):
        parse_desired(stale, trust, device_id="cam-7")


def test_an_older_serial_is_a_replay_and_the_same_serial_is_accepted_again(signing_key: SigningKey,
                                                                          trust: TrustStore) -> None:
    wire = sign_desired(_document(serial=12), signing_key)
    assert _parse(wire, trust, last_serial=12).serial == 12      # the retained message delivered again
    assert _parse(wire, trust, last_serial=11).serial == 12
    with pytest.raises(DesiredStateError, match=r"serial 12\) is older than one already accepted \(serial 13\)"):
        _parse(wire, trust, last_serial=13)
