"""The fleet's desired-state key and the per-device signed documents.

The key is generated on first use and kept in the ``settings`` table (not a file), so every server
process sharing the database signs with the same key and agents trust one key per fleet. Each device
has one current document; issuing a new one merges its model entries with the previous document's
(a device may run several models, each rolled out on its own) and raises the serial, which agents use
to refuse replays: ``max(previous + 1, now in ms)`` stays monotonic even if a row is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeml.bundle.keys import SigningKey
from edgeml.desired import sign_desired
from edgeml.errors import KeyStoreError
from edgeml.fleet import bundle_links, keyring
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import Bundle, DesiredDocument, Setting, utcnow

KEY_SETTING = "desired.signing_key"
DESIRED_LIFETIME_S = 30 * 86400   # an offline device still accepts its document when it returns within this


def fleet_signing_key(store: Store) -> SigningKey:
    """The fleet's desired-state key, created on first use (races between server processes: first wins)."""
    with store.session() as session:
        row = session.get(Setting, KEY_SETTING)
        if row is not None:
            return _key_from_pem(row.value)
    try:
        with store.session() as session:
            session.add(Setting(key=KEY_SETTING, value=SigningKey.generate().private_pem().decode()))
    except IntegrityError:
        pass
    return fleet_signing_key(store)


def _key_from_pem(pem: str) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"setting {KEY_SETTING} does not hold an Ed25519 key; delete it to make a new one")
    return SigningKey(key)


def model_entry(bundle: Bundle, *, rollback: bool = False) -> dict[str, Any]:
    """One ``models`` entry: the bundle's file hash and where to download it (see :mod:`..bundle_links`)."""
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.id, "size": int(bundle.size),
            **bundle_links.current().entry_fields(bundle), "rollback": rollback}


@dataclass(frozen=True)
class Issued:
    device_id: str
    wire: bytes


def issue(session: Session, key: SigningKey, device_id: str, entry: Mapping[str, Any], *,
          rollout_id: str | None, probation: Mapping[str, Any], now: float | None = None) -> Issued:
    """Sign and store a new desired state for one device with ``entry`` replacing that model's entry."""
    now = time.time() if now is None else now
    row = session.get(DesiredDocument, device_id, with_for_update=True)
    models = [m for m in (row.models if row else []) if m.get("name") != entry["name"]] + [dict(entry)]
    serial = max((row.serial + 1) if row else 1, int(now * 1000))
    wire = _sign(session, key, device_id, serial, models, probation, rollout_id, now)
    if row is None:
        row = DesiredDocument(device_id=device_id)
        session.add(row)
    row.serial, row.models, row.wire, row.rollout_id = serial, models, wire.decode(), rollout_id
    row.issued_at, row.published_at = utcnow(), None
    return Issued(device_id, wire)


def _sign(session: Session, key: SigningKey, device_id: str, serial: int, models: list[dict[str, Any]],
          probation: Mapping[str, Any], rollout_id: str | None, now: float) -> bytes:
    """Every document carries the bundle signers (trust section) and the fleet key's rotation chain."""
    return sign_desired({"device": device_id, "issued": now, "expires": now + DESIRED_LIFETIME_S, "serial": serial,
                         "models": sorted(models, key=lambda m: str(m["name"])), "probation": dict(probation),
                         "rollout": rollout_id, "trust": keyring.device_trust_section(session)},
                        key, keyring.rotations(session))


def reissue_all(session: Session, key: SigningKey, now: float | None = None) -> int:
    """Re-sign every device's current document (same models, new serial, current trust section), so a
    key rotation or revocation reaches each device with its next document; returns how many."""
    now = time.time() if now is None else now
    count = 0
    for row in session.scalars(select(DesiredDocument).with_for_update()):
        previous = json.loads(json.loads(row.wire)["payload"])
        row.serial = max(row.serial + 1, int(now * 1000))
        row.wire = _sign(session, key, row.device_id, row.serial, list(row.models),
                         previous.get("probation") or {}, row.rollout_id, now).decode()
        row.issued_at, row.published_at = utcnow(), None
        count += 1
    return count


def rotate_fleet_key(store: Store) -> tuple[SigningKey, SigningKey, int]:
    """Replace the fleet key by a successor the current key vouches for; returns (old, new, reissued)."""
    with store.session() as session:
        row = session.get(Setting, KEY_SETTING, with_for_update=True)
        if row is None:
            raise KeyStoreError("the fleet has no desired-state key yet: nothing to rotate")
        current, successor = _key_from_pem(row.value), SigningKey.generate()
        keyring.record_rotation(session, current, successor)
        row.value = successor.private_pem().decode()
        return current, successor, reissue_all(session, successor)
