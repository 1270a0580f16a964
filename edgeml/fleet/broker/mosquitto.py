"""Files that make a Mosquitto broker enforce the fleet's access rules (``edgeml-fleet broker-config``).

``password_file`` holds ``user:$7$…`` lines (mosquitto_passwd's PBKDF2-SHA512 format) for the service
account and every unrevoked device; ``acl_file`` gives the service account read on everything and write on
``desired`` topics, and every other user (a device, username = device id) write on its own status,
telemetry and events topics and read on its own ``desired`` topic via ``%u`` patterns. Mosquitto checks
read rights for every message it delivers, retained ones and those matched by wildcard or ``$share``
filters included, and write rights for last wills too. The files are rewritten on every enrol/revoke and
Mosquitto is told to reload them with SIGHUP when its pid file is known: on that reload Mosquitto checks
every connected client against the new password file again and disconnects a revoked device at once.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from edgeml.errors import FleetError
from edgeml.fileio import write_atomic
from edgeml.protocol import DEVICE_WRITABLE_LEAVES, ROOT, SERVICE_USERNAME

log = logging.getLogger(__name__)

# FACTS.md: with defaults Mosquitto silently drops QoS 1 messages past 1000 queued per client.
MAX_QUEUED_MESSAGES = 100_000
MAX_INFLIGHT_MESSAGES = 100


@dataclass(frozen=True)
class MosquittoFiles:
    password_file: str
    acl_file: str

    def config(self, password_path: Path | str, acl_path: Path | str, *, port: int = 1883,
               bind: str = "127.0.0.1") -> str:
        return mosquitto_conf(password_path, acl_path, port=port, bind=bind)


def acl_text() -> str:
    return "\n".join([
        "# written by edgeml-fleet: do not edit (rewritten on every enrol/revoke)",
        f"user {SERVICE_USERNAME}",
        "topic read edgeml/#",
        "topic read $share/#",
        f"topic write {ROOT}/+/desired",
        "",
        "# every other user is a device whose username is its id: it writes its own topics but never",
        "# 'desired' (only the fleet does), and reads only its own 'desired' (retained or not)",
        *(f"pattern write {ROOT}/%u/{leaf}" for leaf in DEVICE_WRITABLE_LEAVES),
        f"pattern read {ROOT}/%u/desired",
        "",
    ])


def mosquitto_files(accounts: list[tuple[str, str]]) -> MosquittoFiles:
    for user, _ in accounts:
        if ":" in user or "\n" in user:
            raise FleetError(f"broker user name {user!r} cannot go into a mosquitto password file")
    passwords = "".join(f"{user}:{pw_hash}\n" for user, pw_hash in accounts)
    return MosquittoFiles(password_file=passwords, acl_file=acl_text())


def mosquitto_conf(password_path: Path | str, acl_path: Path | str, *, port: int = 1883, bind: str = "127.0.0.1",
                   tls: tuple[Path, Path] | None = None) -> str:
    lines = [
        "# written by edgeml-fleet broker-config",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_path}",
        f"acl_file {acl_path}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        # Queued QoS 1 telemetry for a restarting fleet server must survive a broker restart too.
        "persistence true",
        f"persistence_location {Path(password_path).parent}/",
        "autosave_interval 10",
        f"listener {port} {bind}",
    ]
    if tls is not None:
        lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
    return "\n".join(lines) + "\n"


def write_mosquitto_files(directory: Path, files: MosquittoFiles, *, pid_file: Path | None = None,
                          port: int = 1883, bind: str = "127.0.0.1") -> dict[str, Path]:
    """Write password_file (0600), acl_file and a mosquitto.conf that uses them; SIGHUP the broker if
    ``pid_file`` names a running one. Returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"password_file": directory / "passwords", "acl_file": directory / "acl",
             "config": directory / "mosquitto.conf"}
    write_atomic(paths["password_file"], files.password_file, mode=0o600)
    write_atomic(paths["acl_file"], files.acl_file, mode=0o644)
    if not paths["config"].exists():  # the operator may have edited it (listeners, TLS): keep theirs
        conf = mosquitto_conf(paths["password_file"], paths["acl_file"], port=port, bind=bind)
        write_atomic(paths["config"], conf, mode=0o644)
    if pid_file is not None:
        reload_mosquitto(pid_file)
    return paths


def reload_mosquitto(pid_file: Path) -> None:
    """SIGHUP the mosquitto whose pid is in ``pid_file``; no pid file means it is not running yet and
    will read the files when it starts."""
    if not pid_file.exists():
        log.warning("no mosquitto pid file at %s: not signalling a reload", pid_file)
        return
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise FleetError(f"cannot read mosquitto's pid from {pid_file}: {exc}; check --mosquitto-pid-file") from exc
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise FleetError(f"mosquitto (pid {pid} from {pid_file}) is not running") from exc
