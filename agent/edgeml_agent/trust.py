"""The device's two trust sets, kept apart on disk and in memory (see :mod:`edgeml.keyroles`).

Layout under ``<data_dir>/trusted/``::

    fleet/<key id>.pub      the fleet key: desired states only (one key; a rotation replaces it)
    bundles/<key id>.pub    bundle signers the fleet manages (replaced by each desired state's trust section)
    revoked.json            builder key ids the fleet revoked: refused wherever they are listed

Bundle signers = ``bundles/`` plus the config's ``trusted_keys`` (the operator's own keys), minus revoked
keys and minus any fleet key: one key never holds both roles on a device.

Migration from the single ``trusted/`` directory older agents wrote (fleet key and bundle keys together),
on the first start: the fleet this device enrolled with is asked which key ids are fleet keys
(``GET /v1/devices/me/keys``, with the device's token, the same channel enrolment used; the answer only
classifies keys the device already holds, it never adds one); failing that, the key that signed the
desired state being applied (``updates/state.json``) is the fleet key. It moves to ``fleet/``; every other
``*.pub`` there moves to ``bundles/``. When neither tells, all keys become bundle signers and desired
states are refused (with that reason) until the fleet key is placed in ``trusted/fleet/`` or the device is
enrolled again — never the unsafe way round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.bundle.keys import TrustStore, key_id, load_public_key, public_key_pem
from edgeml.desired import DesiredState
from edgeml.errors import ConfigError, EdgeMLError
from edgeml.fileio import write_atomic
from edgeml_agent.transport import HttpClient

log = logging.getLogger("edgeml_agent")

TRUSTED_DIR = "trusted"


class DeviceTrust:
    """``fleet`` checks desired states, ``bundles`` checks bundles; both are live (updated in place)."""

    def __init__(self, data_dir: Path, local_paths: Iterable[Path] = (),
                 ask_fleet: Callable[[], set[str]] | None = None) -> None:
        self.root = data_dir / TRUSTED_DIR
        self.fleet_dir, self.bundles_dir = self.root / "fleet", self.root / "bundles"
        self.revoked_file = self.root / "revoked.json"
        self.local_paths = [p for p in local_paths if p.resolve() != self.root.resolve()]
        migrate(data_dir, ask_fleet)
        if ask_fleet is not None and not _keys_in(self.fleet_dir):
            self._fleet_key_from_config(ask_fleet)
        self.fleet, self.bundles = TrustStore(), TrustStore()
        self.reload()

    def _fleet_key_from_config(self, ask_fleet: Callable[[], set[str]]) -> None:
        """An enrolled device configured by hand with the fleet key among its ``trusted_keys``: that key
        (as the fleet names it) takes the fleet role; in the config it is only ever a bundle signer."""
        local = TrustStore.from_paths([p for p in self.local_paths if p.exists()])
        if not local:
            return
        fleet_ids = _ask(ask_fleet) & set(local)
        write_keys(self.fleet_dir, [local[k] for k in sorted(fleet_ids)])
        if fleet_ids:
            log.warning("fleet key %s (listed in trusted_keys) now has the fleet role only", sorted(fleet_ids))

    def revoked(self) -> set[str]:
        try:
            return {str(k) for k in json.loads(self.revoked_file.read_text())}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.revoked_file} is unreadable ({exc}); delete it and the fleet resends it") from exc

    def reload(self) -> None:
        fleet = _keys_in(self.fleet_dir)
        revoked = self.revoked()
        local = TrustStore.from_paths([p for p in self.local_paths if p.exists()]).values()
        signers = [k for k in [*_keys_in(self.bundles_dir), *local] if key_id(k) not in revoked]
        fleet_ids = {key_id(k) for k in fleet}
        self.fleet.replace(fleet)
        self.bundles.replace([k for k in signers if key_id(k) not in fleet_ids])

    def adopt(self, state: DesiredState) -> list[str]:
        """Take over what an accepted desired state says about keys; returns what changed (for the log)."""
        changes, before = [], set(self.bundles)
        if state.fleet_key is not None and state.key_id not in self.fleet:
            write_keys(self.fleet_dir, [state.fleet_key], replace=True)   # the old fleet key is retired
            changes.append(f"fleet key rotated to {state.key_id}")
        if state.trust is not None:
            write_keys(self.bundles_dir, state.trust.signers.values(), replace=True)
            write_atomic(self.revoked_file, json.dumps(sorted(state.trust.revoked)))
        self.reload()
        if set(self.bundles) != before:
            changes.append(f"bundle signers now {sorted(self.bundles)}")
        return changes


def write_keys(directory: Path, keys: Iterable[Ed25519PublicKey], *, replace: bool = False) -> list[str]:
    """``<key id>.pub`` for each key; with ``replace``, every other key in the directory is removed."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    for key in keys:
        kid = key_id(key)
        write_atomic(directory / f"{kid}.pub", public_key_pem(key))
        ids.append(kid)
    if replace:
        for stale in directory.glob("*.pub"):
            if stale.stem not in ids:
                stale.unlink()
    return ids


def migrate(data_dir: Path, ask_fleet: Callable[[], set[str]] | None = None) -> None:
    """Split an old single ``trusted/`` directory into ``fleet/`` and ``bundles/`` (see the module doc)."""
    root = data_dir / TRUSTED_DIR
    loose = sorted(root.glob("*.pub")) if root.is_dir() else []
    if not loose:
        return
    fleet_ids = _ask(ask_fleet) or {k for k in [_last_desired_signer(data_dir)] if k}
    for path in loose:
        try:
            key = load_public_key(path)
        except EdgeMLError as exc:
            log.warning("trusted key %s is unusable and was left out: %s", path, exc)
            continue
        role = "fleet" if key_id(key) in fleet_ids else "bundles"
        write_keys(root / role, [key])
        path.unlink()
        log.warning("trusted key %s moved to %s/ (key roles are kept apart now)", path.name, root / role)
    if not fleet_ids:
        log.warning("no fleet key could be identified in %s: desired states are refused until the fleet's key "
                    "is placed in %s or the device is enrolled again", root, root / "fleet")


def _ask(ask_fleet: Callable[[], set[str]] | None) -> set[str]:
    if ask_fleet is None:
        return set()
    try:
        return ask_fleet()
    except EdgeMLError as exc:
        log.warning("could not ask the fleet which key is its fleet key (%s)", exc)
        return set()


def fleet_key_ids(http: HttpClient, server: str, token: str) -> set[str]:
    """The fleet's answer to "which key ids are fleet keys" (for the migration)."""
    status, body = http.get(f"{server.rstrip('/')}/v1/devices/me/keys",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if status != 200:
        raise EdgeMLError(f"GET /v1/devices/me/keys answered {status}")
    try:
        return {str(k) for k in json.loads(body)["fleet"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgeMLError(f"GET /v1/devices/me/keys answered something unexpected ({exc})") from exc


def _last_desired_signer(data_dir: Path) -> str | None:
    try:
        record = json.loads((data_dir / "updates" / "state.json").read_text())
        return str(json.loads(record["desired"])["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keys_in(directory: Path) -> list[Ed25519PublicKey]:
    return list(TrustStore.from_paths([directory]).values()) if directory.is_dir() else []
