"""The fleet's key roles, kept in the ``settings`` table so every server process agrees:

* the **fleet key** (``desired.signing_key``) signs desired states only; ``rotate_fleet_key`` makes a
  successor, has the current key sign a rotation statement for it (``desired.rotations``, the whole chain,
  sent beside every desired state) and retires the old one (``desired.retired_keys``, shown in
  ``edgeml-fleet keys list``);
* **bundle signers** are the ``trusted_keys`` rows; ``revoke`` removes one and records it in
  ``keys.revoked``, so it can never be trusted again here and every desired state tells devices to refuse it.

Each desired state carries the trust section (signers + revoked ids) and the rotation chain
(:mod:`edgeml.keyroles`), so devices follow both on their next document.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeml.bundle.keys import SigningKey
from edgeml.fleet.store.models import Setting, TrustedKey, utcnow
from edgeml.jsontypes import JSON
from edgeml.keyroles import sign_rotation, trust_section

ROTATIONS_SETTING = "desired.rotations"
RETIRED_SETTING = "desired.retired_keys"
REVOKED_SETTING = "keys.revoked"


def _load(session: Session, key: str, default: Any) -> Any:
    row = session.get(Setting, key)
    return json.loads(row.value) if row is not None else default


def _save(session: Session, key: str, value: Any) -> None:
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=json.dumps(value)))
    else:
        row.value = json.dumps(value)


def rotations(session: Session) -> list[dict[str, str]]:
    """The chain of rotation statements, oldest first (empty until the fleet key is first rotated)."""
    return list(_load(session, ROTATIONS_SETTING, []))


def retired_keys(session: Session) -> list[dict[str, str]]:
    return list(_load(session, RETIRED_SETTING, []))


def revoked_keys(session: Session) -> dict[str, dict[str, str]]:
    return dict(_load(session, REVOKED_SETTING, {}))


def device_trust_section(session: Session) -> dict[str, JSON]:
    """What every desired state tells devices about bundle signers."""
    pems = [r.public_pem for r in session.scalars(select(TrustedKey))]
    return trust_section(pems, revoked_keys(session))


def record_rotation(session: Session, current: SigningKey, successor: SigningKey) -> None:
    """Chain ``successor`` onto ``current`` (the caller stores the successor as the signing key)."""
    _save(session, ROTATIONS_SETTING, [*rotations(session), sign_rotation(current, successor)])
    _save(session, RETIRED_SETTING, [*retired_keys(session), {"key_id": current.key_id,
                                                              "public_pem": current.public_pem().decode(),
                                                              "retired_at": utcnow().isoformat()}])


def revoke(session: Session, key_id: str, name: str, public_pem: str) -> None:
    revoked = revoked_keys(session)
    revoked[key_id] = {"name": name, "public_pem": public_pem, "revoked_at": utcnow().isoformat()}
    _save(session, REVOKED_SETTING, revoked)


def retired_key_ids(session: Session) -> set[str]:
    """Every retired fleet key id: like the current one, none of them may ever sign bundles here."""
    return {r["key_id"] for r in retired_keys(session)}
