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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeml.bundle.keys import SigningKey
from edgeml.desired import sign_desired
from edgeml.errors import KeyStoreError
from edgeml.fleet import bundle_links, keyring
from edgeml.fleet.rollouts import wakeups
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
    serial: int
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
    return Issued(device_id, serial, wire)


def issue_many(session: Session, key: SigningKey, device_ids: Sequence[str], entry: Mapping[str, Any], *,
               rollout_id: str | None, probation: Mapping[str, Any], now: float | None = None) -> list[Issued]:
    """:func:`issue` for many devices at once: the trust section and rotation chain are read once, the
    current documents in one locking query per chunk, and the new ones written with one executemany per
    kind (insert, update), which is what lets a wave of 10,000 devices be signed in seconds."""
    now = time.time() if now is None else now
    trust, chain = keyring.device_trust_section(session), keyring.rotations(session)
    table = cast(Table, DesiredDocument.__table__)
    current: dict[str, tuple[int, list[dict[str, Any]]]] = {}
    for chunk in _chunks(list(device_ids), 2000):
        query = select(table.c.device_id, table.c.serial, table.c.models).where(table.c.device_id.in_(chunk))
        current.update((d, (s, m)) for d, s, m in session.execute(query.with_for_update()))
    issued_at = utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    out = []
    for device_id in device_ids:
        serial, models = current.get(device_id, (0, []))
        models = [m for m in models if m.get("name") != entry["name"]] + [dict(entry)]
        serial = max(serial + 1, int(now * 1000))
        wire = sign_desired(_document(device_id, serial, models, probation, rollout_id, now, trust), key, chain)
        row = {"serial": serial, "models": models, "wire": wire.decode(), "rollout_id": rollout_id,
               "issued_at": issued_at, "published_at": None}
        if device_id in current:
            updates.append({"b_device_id": device_id, **row})
        else:
            inserts.append({"device_id": device_id, **row})
        out.append(Issued(device_id, serial, wire))
    if inserts:
        session.execute(insert(table), inserts)
    if updates:
        session.execute(update(table).where(table.c.device_id == bindparam("b_device_id")), updates)
    return out


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _sign(session: Session, key: SigningKey, device_id: str, serial: int, models: list[dict[str, Any]],
          probation: Mapping[str, Any], rollout_id: str | None, now: float) -> bytes:
    """Every document carries the bundle signers (trust section) and the fleet key's rotation chain."""
    document = _document(device_id, serial, models, probation, rollout_id, now, keyring.device_trust_section(session))
    return sign_desired(document, key, keyring.rotations(session))


def _document(device_id: str, serial: int, models: list[dict[str, Any]], probation: Mapping[str, Any],
              rollout_id: str | None, now: float, trust: Any) -> dict[str, Any]:
    return {"device": device_id, "issued": now, "expires": now + DESIRED_LIFETIME_S, "serial": serial,
            "models": sorted(models, key=lambda m: str(m["name"])), "probation": dict(probation),
            "rollout": rollout_id, "trust": trust}


def reissue_all(session: Session, key: SigningKey, now: float | None = None) -> int:
    """Re-sign every device's current document (same models, new serial, current trust section), so a
    key rotation or revocation reaches each device with its next document; returns how many."""
    now = time.time() if now is None else now
    trust, chain = keyring.device_trust_section(session), keyring.rotations(session)
    count = 0
    for row in session.scalars(select(DesiredDocument).with_for_update()):
        previous = json.loads(json.loads(row.wire)["payload"])
        row.serial = max(row.serial + 1, int(now * 1000))
        document = _document(row.device_id, row.serial, list(row.models), previous.get("probation") or {},
                             row.rollout_id, now, trust)
        row.wire = sign_desired(document, key, chain).decode()
        row.issued_at, row.published_at = utcnow(), None
        count += 1
    if count:
        wakeups.note(session, [wakeups.PUBLISH])   # the controller publishes them (within its poll interval)
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
