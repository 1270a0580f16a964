"""Keep the password/ACL files of a Mosquitto someone else runs in step with the store
(``edgeml-fleet serve --broker mqtt://… --mosquitto-dir DIR [--mosquitto-pid-file F]``).

What went wrong before, and what is done about it here:

- concurrent enrolments raced on one temporary file: writes now go through ``write_atomic`` (a unique
  temporary file each) and writers are serialized, inside one process by a lock and across processes
  sharing the directory by ``flock`` on ``DIR/.lock``;
- a writer that read the store before another enrolment committed could write a file without that
  device: every write here includes the devices this process is enrolling right now (told to the broker
  before their transaction commits) and leaves out the ones it is revoking;
- Mosquitto sometimes missed the reload signal, and an enrolled device was refused until someone
  reloaded by hand: with a pid file the reload is *verified* — the new device's own login is tried until
  the broker accepts it (SIGHUP again every second), and an enrolment whose login never works fails and
  rolls back instead of leaving a device that cannot connect.

Where the fleet starts Mosquitto itself, ``--broker mosquitto`` (dynamic-security plugin, acknowledged
commands, no files rewritten) is the better path; this one stays for a Mosquitto managed elsewhere.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeml.errors import FleetError
from edgeml.fleet.broker.accounts import StoreAccounts
from edgeml.fleet.broker.mosquitto import mosquitto_files, reload_mosquitto, write_mosquitto_files
from edgeml.fleet.credentials import mosquitto_hash

log = logging.getLogger(__name__)
VERIFY_TIMEOUT_S = 10.0

# (host, port, tls, ca_file) where devices reach the broker: read when needed, the server learns it late
BrokerAddress = Callable[[], tuple[str, int, bool, str | None]]


def login_accepted(address: tuple[str, int, bool, str | None], username: str, password: str,
                   timeout_s: float = 2.0) -> bool | None:
    """Try one MQTT login: True accepted, False refused, None no answer."""
    import paho.mqtt.client as mqtt

    host, port, tls, ca_file = address
    answer: list[bool] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{username}-probe", protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=ca_file)
    client.on_connect = lambda c, u, f, rc, p: answer.append(not rc.is_failure)
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return None
    deadline = time.monotonic() + timeout_s
    while not answer and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    return answer[0] if answer else None


class PasswordFileSync:
    """The store's broker accounts as Mosquitto files, rewritten (and, with a pid file, reloaded and
    verified) on every enrolment and revocation. Implements ``FleetContext.broker_credentials``.

    ``accounts`` should read through a connection pool of its own: revocations call in from inside their
    transaction, holding a connection of the server's pool while they wait for the lock here.
    """

    def __init__(self, accounts: StoreAccounts, directory: Path, *, pid_file: Path | None = None,
                 address: BrokerAddress | None = None) -> None:
        self.accounts, self.directory, self.pid_file, self.address = accounts, directory, pid_file, address
        self._lock = threading.Lock()
        self._enrolling: dict[str, str] = {}  # device id -> $7$ hash, until the store has it
        self._revoked: set[str] = set()  # device ids are never reused

    def sync(self, *, reload: bool = True) -> None:
        with self._lock, self._file_lock():
            self._write(reload=reload)

    def add_device(self, device_id: str, password: str) -> None:
        with self._lock, self._file_lock():
            self._enrolling[device_id] = mosquitto_hash(password)
            self._write(reload=True)
            # no pid file: Mosquitto is not running and reads the files when it starts
            if self.pid_file is not None and self.pid_file.exists() and self.address is not None:
                try:
                    self._verify(device_id, password)
                except FleetError:
                    self._enrolling.pop(device_id, None)  # the enrolment rolls back
                    raise

    def remove_device(self, device_id: str) -> None:
        with self._lock, self._file_lock():
            self._revoked.add(device_id)
            self._enrolling.pop(device_id, None)
            self._write(reload=True)

    def _write(self, *, reload: bool) -> None:
        lines = dict(self.accounts.password_lines())
        self._enrolling = {d: h for d, h in self._enrolling.items() if d not in lines}  # committed since
        lines.update(self._enrolling)
        accounts = [(user, pw_hash) for user, pw_hash in lines.items() if user not in self._revoked]
        write_mosquitto_files(self.directory, mosquitto_files(accounts),
                              pid_file=self.pid_file if reload else None)

    def _verify(self, username: str, password: str) -> None:
        """Return once the broker accepts ``username``'s login; signal the reload again every second."""
        assert self.address is not None and self.pid_file is not None
        address = self.address()
        started = signalled = time.monotonic()
        while login_accepted(address, username, password) is not True:
            now = time.monotonic()
            if now - started > VERIFY_TIMEOUT_S:
                raise FleetError(f"Mosquitto at {address[0]}:{address[1]} did not take the new credentials of "
                                 f"'{username}' within {VERIFY_TIMEOUT_S:.0f} s of reloading {self.directory}")
            if now - signalled >= 1.0:
                log.info("mosquitto has not applied the new password file yet: signalling it again")
                reload_mosquitto(self.pid_file)
                signalled = now
            time.sleep(0.02)

    def _file_lock(self) -> Any:
        self.directory.mkdir(parents=True, exist_ok=True)
        return _Flock(self.directory / ".lock")


class _Flock:
    """An exclusive ``flock`` for a ``with`` block: server processes sharing the directory take turns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def __enter__(self) -> None:
        self._file = open(self.path, "a")  # closed in __exit__
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
