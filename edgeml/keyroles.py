"""Key roles: the documents that move trust between the fleet and its devices.

Two roles, never mixed (TUF-style):

* **bundle signers** (builders' keys) decide *which models may run*: a bundle is installed and loaded
  only if one of them signed it;
* **the fleet key** decides *which model runs now*: it signs desired states and nothing else.

Both are managed through documents the fleet key signs, so no device needs re-enrolling:

* the **trust section** of a desired state's (signed) payload —
  ``"trust": {"signers": [PEM, ...], "revoked": [key id, ...]}`` — is the complete set of bundle signers
  the fleet wants the device to accept, and the builder keys it has revoked. A device replaces its
  fleet-managed signer set with it; a revoked key is refused even where the device's own config lists it.
* a **rotation statement** — ``{"payload": {"kind": ROTATION_KIND, "previous": kid, "next": kid,
  "next_pem": PEM, "issued": t}, "key_id": previous, "signature": b64}`` — is the current fleet key
  vouching for its successor. The fleet sends the whole chain beside every desired state (wire field
  ``"rotations"``), so a device that was offline through several rotations still walks from the key it
  trusts to the current one. Once a device accepts a desired state signed by the successor it keeps
  only that key: the old one is refused from then on (no grace window — the fleet never signs with a
  retired key again, and the chain carries late devices forward).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.bundle.keys import SigningKey, key_id, load_public_key, verify_signature
from edgeml.bundle.manifest import canonical_json
from edgeml.errors import DesiredStateError, KeyStoreError
from edgeml.jsontypes import JSON

ROTATION_KIND = "edgeml.fleet-key-rotation"


@dataclass(frozen=True)
class TrustSection:
    """The bundle signers a fleet-signed desired state names, and the builder keys it revoked."""

    signers: Mapping[str, Ed25519PublicKey]
    revoked: frozenset[str]


def trust_section(signer_pems: Iterable[str], revoked: Iterable[str]) -> dict[str, JSON]:
    """The ``trust`` entry of a desired-state payload (the fleet side)."""
    return {"signers": sorted(signer_pems), "revoked": sorted(set(revoked))}


def parse_trust_section(value: object) -> TrustSection | None:
    """The payload's ``trust`` entry, or None when the fleet sent none (an older fleet)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("signers"), list) \
            or not isinstance(value.get("revoked", []), list):
        raise DesiredStateError("the desired state's trust section must be {'signers': [PEM], 'revoked': [key id]}")
    try:
        keys = [load_public_key(str(p).encode()) for p in value["signers"]]
    except KeyStoreError as exc:
        raise DesiredStateError(f"the desired state's trust section holds a bad key: {exc}") from exc
    revoked = frozenset(str(k) for k in value.get("revoked", []))
    return TrustSection({key_id(k): k for k in keys if key_id(k) not in revoked}, revoked)


def sign_rotation(previous: SigningKey, successor: SigningKey, *, now: float | None = None) -> dict[str, str]:
    """The current fleet key's statement that ``successor`` takes over from it."""
    payload = canonical_json({"kind": ROTATION_KIND, "previous": previous.key_id, "next": successor.key_id,
                              "next_pem": successor.public_pem().decode(),
                              "issued": time.time() if now is None else now}).decode()
    return {"payload": payload, "key_id": previous.key_id,
            "signature": base64.b64encode(previous.sign(payload.encode())).decode()}


def follow_rotations(trusted: Mapping[str, Ed25519PublicKey], chain: object) -> dict[str, Ed25519PublicKey]:
    """``trusted`` plus every successor a trusted key (or an already-followed successor) vouched for.

    Statements signed by a key this device does not know are skipped, not refused: they are links of
    the chain the device already walked past.
    """
    keys = dict(trusted)
    if chain is None:
        return keys
    if not isinstance(chain, list):
        raise DesiredStateError("the desired state's rotations must be a list of signed statements")
    for statement in chain:
        successor = _verified_successor(keys, statement)
        if successor is not None:
            keys[key_id(successor)] = successor
    return keys


def _verified_successor(keys: Mapping[str, Ed25519PublicKey], statement: object) -> Ed25519PublicKey | None:
    try:
        assert isinstance(statement, dict)
        payload = str(statement["payload"]).encode()
        signer = keys.get(str(statement["key_id"]))
        signature = base64.b64decode(str(statement["signature"]), validate=True)
        doc = json.loads(payload)
        assert isinstance(doc, dict)
    except (AssertionError, KeyError, binascii.Error, json.JSONDecodeError) as exc:
        raise DesiredStateError(f"a key rotation statement is malformed ({exc!r})") from exc
    if signer is None:
        return None
    if not verify_signature(signer, signature, payload):
        raise DesiredStateError("a key rotation statement's signature does not match: it was altered")
    if doc.get("kind") != ROTATION_KIND or doc.get("previous") != statement["key_id"]:
        raise DesiredStateError("a key rotation statement names the wrong kind or signer")
    try:
        successor = load_public_key(str(doc["next_pem"]).encode())
    except (KeyError, KeyStoreError) as exc:
        raise DesiredStateError(f"a key rotation statement holds no usable successor key ({exc})") from exc
    if key_id(successor) != doc.get("next"):
        raise DesiredStateError("a key rotation statement's successor key does not match its key id")
    return successor
