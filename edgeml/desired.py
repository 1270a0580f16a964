"""The desired state: what the fleet wants one device to run, signed with the fleet's key.

The fleet publishes it retained on ``edgeml/v1/<device>/desired`` and serves it over HTTP for agents
that poll. The agent acts on it only after checking, in this order: the signature (a key it trusts),
that it is addressed to this device, that it has not expired, and that it is not older than the last
one it accepted (a replayed old document cannot move a device back).

Document (schema 1)::

    {"schema": 1, "device": id, "issued": unix s, "expires": unix s, "serial": int,
     "models": [{"name", "version", "sha256" (of the .edgepkg file), "size", "url",
                 "rollback": bool,  # true only when the fleet sends the device back to an older version
                 "fleet_url",       # optional: the fleet's own route when "url" names a mirror (fallback)
                 "tar_sha256", "tar_size"  # optional: the uncompressed tar stream, what a delta rebuilds
                }],
     "probation": {"seconds", "max_error_rate", "max_latency_regression", "min_shadow_agreement",
                   "shadow_fraction"},
     "rollout": id or null,
     "trust": {"signers": [PEM], "revoked": [key id]},  # optional: the bundle signers (edgeml.keyroles)
     "capture": {"<model>": policy}     # optional: overrides the bundle's capture policy (edgeml.capture)
    }

Wire format: ``{"payload": <the document as canonical JSON text>, "key_id": ..., "signature": b64,
"rotations": [fleet-key rotation statements]}`` — the signature covers the exact payload bytes. Only the
fleet key (``trusted`` here is the device's *fleet* trust set, never its bundle signers), or a successor
it vouched for in ``rotations``, can sign a desired state: see :mod:`edgeml.keyroles`. Both layers are
JSON Schemas in ``edgeml/schemas/`` (``wire.schema.json``, ``desired.schema.json``); keys they do not
name are allowed and ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml import schemas
from edgeml.bundle.keys import SigningKey, verify_signature
from edgeml.bundle.manifest import canonical_json, parse_semver
from edgeml.errors import DesiredStateError
from edgeml.jsonlimits import load_document, loads_bounded
from edgeml.keyroles import TrustSection, follow_rotations, parse_trust_section

SCHEMA = 1
MAX_DESIRED_BYTES = 1 << 20     # a document lists a device's models: a few KB; the cap stops a flood
MAX_DESIRED_DEPTH = 16          # the document nests 3 levels


@dataclass(frozen=True)
class DesiredModel:
    name: str
    version: str
    sha256: str
    size: int
    url: str
    rollback: bool = False
    fleet_url: str | None = None     # the fleet's own download route when ``url`` names a mirror
    tar_sha256: str | None = None    # the bundle's uncompressed tar stream (a delta rebuilds it)
    tar_size: int | None = None


@dataclass(frozen=True)
class DesiredState:
    device: str
    issued: float
    expires: float
    serial: int
    models: tuple[DesiredModel, ...]
    probation: Mapping[str, Any]
    rollout: str | None
    raw: bytes            # the signed wire document, kept to persist and re-check after a restart
    key_id: str = ""      # the fleet key that signed it (a successor once the fleet rotated its key)
    fleet_key: Ed25519PublicKey | None = None
    trust: TrustSection | None = None     # the bundle signers the fleet wants this device to accept
    capture: Mapping[str, Any] | None = None   # capture policy per model name (edgeml.capture), overriding bundles

    def model(self, name: str) -> DesiredModel | None:
        return next((m for m in self.models if m.name == name), None)


def sign_desired(document: Mapping[str, Any], key: SigningKey,
                 rotations: list[dict[str, str]] | None = None) -> bytes:
    payload = canonical_json({**document, "schema": SCHEMA}).decode()
    signature = key.sign(payload.encode())
    wire: dict[str, Any] = {"payload": payload, "key_id": key.key_id,
                            "signature": base64.b64encode(signature).decode()}
    if rotations:
        wire["rotations"] = rotations
    return json.dumps(wire).encode()


def parse_desired(
    wire: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    device_id: str,
    now: float | None = None,
    last_serial: int | None = None,
) -> DesiredState:
    """Verify and parse a desired-state document; raise :class:`DesiredStateError` saying why not.

    ``trusted`` is the device's fleet-key set (never its bundle signers). Shape and types are checked
    against ``edgeml/schemas/{wire,desired}.schema.json`` before any field is used (every offending JSON
    path in one error); the checks below them are about meaning.
    """
    outer = _wire_fields(wire)
    payload = outer["payload"].encode()
    key_id = str(outer["key_id"])
    try:
        signature = base64.b64decode(outer["signature"], validate=True)
    except binascii.Error as exc:
        raise DesiredStateError(f"the desired state is malformed ({exc})") from exc
    key = follow_rotations(trusted, outer.get("rotations")).get(key_id)
    if key is None:
        raise DesiredStateError(f"the desired state is signed by key {key_id}, which this device does not trust "
                                "as its fleet key")
    if not verify_signature(key, signature, payload):
        raise DesiredStateError("the desired state's signature does not match: it was altered")
    doc = _document(payload)
    models = tuple(DesiredModel(m["name"], m["version"], m["sha256"], int(m["size"]), m["url"],
                                m.get("rollback", False), m.get("fleet_url"), m.get("tar_sha256"),
                                m.get("tar_size")) for m in doc["models"])
    state = DesiredState(doc["device"], float(doc["issued"]), float(doc["expires"]), int(doc["serial"]),
                         models, dict(doc.get("probation") or {}), doc.get("rollout"), wire, key_id, key,
                         parse_trust_section(doc.get("trust")), doc.get("capture"))
    for m in models:
        parse_semver(m.version)
    if state.device != device_id:
        raise DesiredStateError(
            f"the desired state is addressed to device {state.device}, not to this device ({device_id})")
    now = time.time() if now is None else now
    if state.expires <= now:
        raise DesiredStateError(
            f"the desired state expired {now - state.expires:.0f} s ago; the fleet must issue a new one")
    if last_serial is not None and state.serial < last_serial:
        raise DesiredStateError(f"the desired state (serial {state.serial}) is older than one already accepted "
                                f"(serial {last_serial}): replay refused")
    return state


def _wire_fields(wire: bytes) -> dict[str, Any]:
    """The wrapper's payload text, key id and signature text, or a "malformed" refusal naming what is wrong."""
    try:
        outer = loads_bounded(wire, max_bytes=MAX_DESIRED_BYTES, max_depth=MAX_DESIRED_DEPTH)
    except ValueError as exc:
        raise DesiredStateError(f"the desired state is malformed ({exc})") from exc
    found = schemas.problems("wire", outer)
    if found:
        raise DesiredStateError(f"the desired state is malformed ({'; '.join(found)})")
    return cast(dict[str, Any], outer)   # the schema says it is an object


def _document(payload: bytes) -> dict[str, Any]:
    """The signed payload, parsed and checked against the desired-state schema."""
    doc = load_document(payload, "the desired state's payload", DesiredStateError, max_bytes=MAX_DESIRED_BYTES,
                        max_depth=MAX_DESIRED_DEPTH)
    if isinstance(doc, dict) and doc.get("schema") != SCHEMA:
        raise DesiredStateError(f"desired state schema {doc.get('schema')!r} is not supported")
    found = schemas.problems("desired", doc)
    if found:
        raise DesiredStateError(f"the desired state misses or mistypes a field: {'; '.join(found)}")
    return cast(dict[str, Any], doc)
