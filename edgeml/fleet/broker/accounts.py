"""Who may log in to the broker: enrolled, unrevoked devices and the fleet's own service account.

The service account's password lives in the ``settings`` table so that every server process sharing one
database (and one broker) uses the same one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from edgeml.fleet.credentials import check_mosquitto_hash, hashes_match, mosquitto_hash
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import Device, Setting
from edgeml.protocol import SERVICE_USERNAME

SERVICE_PASSWORD_KEY = "broker.service_password"


@dataclass(frozen=True)
class ServiceCredentials:
    username: str
    password: str


def service_credentials(store: Store) -> ServiceCredentials:
    """The service account, created on first use."""
    with store.reader() as session:
        row = session.get(Setting, SERVICE_PASSWORD_KEY)
        if row is not None:
            return ServiceCredentials(SERVICE_USERNAME, row.value)
    try:
        with store.session() as session:
            session.add(Setting(key=SERVICE_PASSWORD_KEY, value=secrets.token_urlsafe(32)))
    except IntegrityError:
        pass  # another server process created it first: use theirs
    return service_credentials(store)


class BrokerAccounts(Protocol):
    """What the broker's auth plugin asks: ``login`` returns 'service', 'device' or None (refused)."""

    def login(self, username: str | None, password: str | None) -> str | None: ...


class StoreAccounts:
    """Checks broker logins against the fleet store (a revoked device fails at once: no cache)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._service = service_credentials(store)

    def login(self, username: str | None, password: str | None) -> str | None:
        if not username or password is None:
            return None
        if username == SERVICE_USERNAME:
            return "service" if hashes_match(self._service.password, password) else None
        # reads only: on SQLite a login must never wait for a writer's lock (a revocation holds it while it
        # tells the broker)
        with self.store.reader() as session:
            device = session.get(Device, username)
            if device is None or device.revoked_at is not None:
                return None
            return "device" if check_mosquitto_hash(device.mqtt_password_hash, password) else None

    def password_lines(self) -> list[tuple[str, str]]:
        """(username, $7$ hash) for every account allowed on the broker: the mosquitto password_file."""
        with self.store.reader() as session:
            devices = session.execute(select(Device.id, Device.mqtt_password_hash)
                                      .where(Device.revoked_at.is_(None)).order_by(Device.id)).all()
        return [(SERVICE_USERNAME, mosquitto_hash(self._service.password))] + [(d, h) for d, h in devices]
