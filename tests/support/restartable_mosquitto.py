"""A real Mosquitto that can be stopped and started again on the same port, keeping its persistence —
for outage tests. TLS with a test CA, passwords and ACLs as the test chooses."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.support.mosquitto import mosquitto_binary
from tests.support.services import free_port, port_open, require
from tests.support.tls import PKI


class RestartableMosquitto:
    def __init__(self, directory: Path, *, password_file: Path, acl_file: Path, pki: PKI | None = None) -> None:
        binary = mosquitto_binary()
        require(binary is not None, "the mosquitto binary is not installed (apt install mosquitto)")
        self.binary = str(binary)
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.pid_file = directory / "mosquitto.pid"
        lines = [
            "persistence true", f"persistence_location {directory}/", "autosave_interval 1",
            "max_queued_messages 100000", "max_inflight_messages 100",
            *(["user root"] if os.geteuid() == 0 else []),
            f"pid_file {self.pid_file}",
            "per_listener_settings false", "allow_anonymous false",
            f"password_file {password_file}", f"acl_file {acl_file}",
            f"listener {self.port} 127.0.0.1",
        ]
        if pki is not None:
            lines += [f"certfile {pki.cert_file}", f"keyfile {pki.key_file}"]
        (directory / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "mosquitto.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen([self.binary, "-c", str(self.dir / "mosquitto.conf")], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file (queued QoS 1 messages survive the restart)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RestartableMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
