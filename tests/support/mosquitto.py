"""Run a real Mosquitto (``/usr/sbin/mosquitto``) on a free port for one test, with a config the test chooses.

    from tests.support.mosquitto import running_mosquitto
    with running_mosquitto(tmp_path, password_file=p, acl_file=a) as broker:
        broker.port, broker.pid_file       # connect to 127.0.0.1:broker.port
        broker.reload()                    # SIGHUP: re-read password/acl files

Every config written here sets ``max_queued_messages`` and ``max_inflight_messages`` explicitly (with
defaults Mosquitto silently drops QoS 1 messages, see FACTS.md). ``tls=(certfile, keyfile)`` adds TLS
to the listener. A missing binary skips locally and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port, port_open, require, stop_process

MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_binary() -> str | None:
    if os.access(MOSQUITTO, os.X_OK):
        return MOSQUITTO
    return shutil.which("mosquitto")


@dataclass
class MosquittoProcess:
    port: int
    config: Path
    pid_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]

    def reload(self) -> None:
        """Make Mosquitto re-read its password and ACL files (what edgeml-fleet does after enrol/revoke)."""
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # mosquitto applies the reload on its next loop iteration

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def write_config(directory: Path, port: int, *, password_file: Path | None = None, acl_file: Path | None = None,
                 tls: tuple[Path, Path] | None = None, extra: str = "") -> Path:
    lines = [
        f"pid_file {directory / 'mosquitto.pid'}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        # As root, mosquitto would switch to user 'mosquitto' and could not read the test's 0600 files.
        *(["user root"] if os.geteuid() == 0 else []),
        f"listener {port} 127.0.0.1",
        f"allow_anonymous {'false' if password_file else 'true'}",
    ]
    if password_file:
        lines.append(f"password_file {password_file}")
    if acl_file:
        lines.append(f"acl_file {acl_file}")
    if tls:
        lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
    path = directory / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@contextmanager
def running_mosquitto(directory: Path, *, password_file: Path | None = None, acl_file: Path | None = None,
                      tls: tuple[Path, Path] | None = None, extra: str = "") -> Iterator[MosquittoProcess]:
    binary = mosquitto_binary()
    require(binary is not None, "the mosquitto binary is not installed (apt install mosquitto)")
    assert binary is not None
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(directory, port, password_file=password_file, acl_file=acl_file, tls=tls, extra=extra)
    log_file = directory / "mosquitto.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    broker = MosquittoProcess(port, config, directory / "mosquitto.pid", log_file, process)
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start on port {port}:\n{broker.log()}")
            time.sleep(0.05)
        yield broker
    finally:
        stop_process(process, 5)
