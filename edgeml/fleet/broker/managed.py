"""A Mosquitto the fleet server starts and supervises itself: ``edgeml-fleet serve --broker mosquitto``.

The one-flag path from the embedded broker to Mosquitto on one machine. The server writes everything
Mosquitto reads into ``<data dir>/mosquitto`` at every start, from its store (the store is the truth):

- ``mosquitto.conf``: loopback listener (or ``--host``), no anonymous logins, the dynamic-security plugin,
  ``max_queued_messages``/``max_inflight_messages`` set explicitly (Mosquitto's defaults silently drop
  QoS 1 messages past 1000 queued per client, FACTS.md) and persistence on, so messages queued for the
  fleet's ingest survive a broker restart;
- ``dynamic-security.json`` (0600): the service account, a broker-admin account with a password made up
  at this start, and every unrevoked device with its own role (see :mod:`edgeml.fleet.broker.dynsec`).

While it runs, enrolment and revocation change the broker through acknowledged control messages. If
Mosquitto dies, the supervisor rewrites its files from the store and starts it again on the same port.

Run as root, Mosquitto switches to the user ``mosquitto`` and could then not read an owner-only file of
root's: the directory is handed to that user (or, where it does not exist, the config says ``user root``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

from edgeml.errors import FleetError
from edgeml.fileio import write_atomic
from edgeml.fleet.broker.accounts import StoreAccounts
from edgeml.fleet.broker.component import DEFAULT_PORT, _any_free_port, port_is_free
from edgeml.fleet.broker.dynsec import DynsecControl, add_device_commands, dynsec_document, remove_device_commands
from edgeml.fleet.broker.mosquitto import MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES
from edgeml.fleet.credentials import mosquitto_hash

log = logging.getLogger(__name__)

PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/mosquitto", "/usr/lib",
               "/usr/local/lib", "/usr/lib64", "/opt/homebrew/lib", "/usr/local/opt/mosquitto/lib")
START_TIMEOUT_S = 15.0


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        raise FleetError("--broker mosquitto needs the mosquitto binary (e.g. 'apt install mosquitto'); "
                         "without it, leave --broker out to use the embedded broker")
    return found


def find_dynsec_plugin() -> str:
    for directory in PLUGIN_DIRS:
        candidate = Path(directory) / PLUGIN_NAME
        if candidate.exists():
            return str(candidate)
    raise FleetError(f"--broker mosquitto needs Mosquitto's dynamic-security plugin ({PLUGIN_NAME}, Mosquitto "
                     f">= 2.0); looked in {', '.join(PLUGIN_DIRS)}")


def _traversable(path: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` (group ``gid``) can reach ``path`` through every directory above it."""
    import stat

    for parent in path.resolve().parents:
        st = parent.stat()
        if not ((st.st_uid == uid and st.st_mode & stat.S_IXUSR) or (st.st_gid == gid and st.st_mode & stat.S_IXGRP)
                or st.st_mode & stat.S_IXOTH):
            return False
    return True


def run_as_user(directory: Path) -> str | None:
    """The ``user`` line for mosquitto.conf, after making ``directory`` that user's.

    Not root: None (Mosquitto keeps the caller's user). Root: Mosquitto would switch to ``mosquitto`` and
    then fail to read root's owner-only files ("File is not readable"), so the directory is handed to that
    user — unless that user cannot even reach it (a data dir under /root), then Mosquitto stays root.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    if not _traversable(directory, entry.pw_uid, entry.pw_gid):
        log.info("user 'mosquitto' cannot reach %s: the managed mosquitto runs as root", directory)
        return "root"
    for path in [directory, *directory.iterdir()]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return "mosquitto"


def managed_conf(directory: Path, plugin: str, host: str, port: int, user: str | None) -> str:
    lines = [
        "# written by edgeml-fleet serve --broker mosquitto at every start: edits are overwritten",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {directory / 'dynamic-security.json'}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "persistence true",
        f"persistence_location {directory}/",
        "autosave_interval 10",
        "log_dest stderr",
        *(f"log_type {kind}" for kind in ("error", "warning", "notice")),
        *([f"user {user}"] if user else []),
        f"listener {port} {host}",
    ]
    return "\n".join(lines) + "\n"


class ManagedMosquitto:
    """Mosquitto as a child process of the fleet server, its credentials changed by acknowledged commands."""

    tls = False

    def __init__(self, accounts: StoreAccounts, directory: Path, *, host: str = "127.0.0.1",
                 port: int | None = None, binary: str | None = None) -> None:
        self.accounts, self.directory, self.host = accounts, directory, host
        self._explicit_port = port is not None
        self.port = port if port is not None else DEFAULT_PORT
        self._binary = binary
        self._admin_password = secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None
        self._control: DynsecControl | None = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for this machine's own clients (e.g. ingest worker processes), once started."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> None:
        binary, plugin = self._binary or find_mosquitto(), find_dynsec_plugin()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._explicit_port and not port_is_free(self.host, self.port):
            self.port = _any_free_port(self.host)
        for attempt in range(3):
            try:
                self._launch(binary, plugin)
                break
            except FleetError:
                if self._explicit_port or attempt == 2:
                    raise
                self.port = _any_free_port(self.host)  # taken between the check and the bind: another one
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        self._control = DynsecControl(connect_host, self.port, self._admin_password)
        if not self._control.wait_ready(START_TIMEOUT_S):
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-1500:]
            raise FleetError(f"mosquitto started but refused the fleet's admin login (is its dynamic-security "
                             f"plugin working?); its log ({self.log_file}) ends:\n{tail}")
        self._supervisor = threading.Thread(target=self._supervise, args=(binary, plugin), daemon=True,
                                            name="edgeml-mosquitto-supervisor")
        self._supervisor.start()

    def _write_files(self, plugin: str) -> Path:
        document = dynsec_document(self.accounts.password_lines(), mosquitto_hash(self._admin_password))
        write_atomic(self.directory / "dynamic-security.json", json.dumps(document), mode=0o600)
        user = run_as_user(self.directory) if os.geteuid() == 0 else None
        conf = write_atomic(self.directory / "mosquitto.conf",
                            managed_conf(self.directory, plugin, self.host, self.port, user), mode=0o600)
        run_as_user(self.directory)  # the new files too
        return conf

    def _launch(self, binary: str, plugin: str) -> None:
        from edgeml.fleet.broker.component import port_accepts

        conf = self._write_files(plugin)
        with open(self.log_file, "ab") as out:
            process = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_accepts(self.host, self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                tail = self.log_file.read_text(errors="replace")[-1500:]
                raise FleetError(f"mosquitto did not start on {self.host}:{self.port} (pick another port with "
                                 f"--broker-port); its log ({self.log_file}) ends:\n{tail}")
            time.sleep(0.05)
        self._process = process
        log.info("managed mosquitto (pid %d) on %s:%d", process.pid, self.host, self.port)

    def _supervise(self, binary: str, plugin: str) -> None:
        while not self._stopping.is_set():
            process = self._process
            if process is None or process.poll() is None:
                self._stopping.wait(0.5)
                continue
            log.error("managed mosquitto exited with %s; restarting it from the store", process.returncode)
            try:
                self._launch(binary, plugin)
                self.restarts += 1
            except FleetError:
                log.exception("could not restart mosquitto; trying again in 2 s")
                self._stopping.wait(2)

    def add_device(self, device_id: str, password: str) -> None:
        """Returns once the broker confirmed it accepts this device's login and topics (else FleetError)."""
        self._running_control().run(add_device_commands(device_id, password))

    def remove_device(self, device_id: str) -> None:
        """Deletes the device's client and role: the broker disconnects it at once."""
        self._running_control().run(remove_device_commands(device_id), tolerate=("not found",))

    def _running_control(self) -> DynsecControl:
        if self._control is None:
            raise FleetError("the managed Mosquitto is not running (the server is starting or stopping)")
        return self._control

    def stop(self) -> None:
        self._stopping.set()
        if self._control is not None:
            self._control.close()
        if self._supervisor is not None:
            self._supervisor.join(5)
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # mosquitto saves its persistence file on SIGTERM
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = self._control = self._supervisor = None
