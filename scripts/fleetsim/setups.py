"""The fleets the benchmark runs against: started here as real processes, or pointed at by flags.

- ``embedded``: ``edgeml-fleet serve`` with its defaults (SQLite in the data dir, the embedded broker).
- ``pg-mosquitto``: a database of its own on the PostgreSQL at 127.0.0.1:5432 (created, dropped after),
  a Mosquitto started here with explicit ``max_queued_messages``/``max_inflight_messages``, and
  ``edgeml-fleet serve --broker mqtt://… --mosquitto-dir … --mosquitto-pid-file …`` keeping its
  password/ACL files in sync.
- ``external``: URL + admin token + database URL of a fleet someone else runs (nothing started).

How the server is started is isolated in :func:`serve_command` and :func:`_start_mosquitto` (the
ingest worker, the broker integration and their flags are changing).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.postgres import temporary_database
from tests.support.services import free_port, port_open, stop_process


@dataclass
class Fleet:
    url: str
    admin_token: str
    db_url: str
    setup: str
    server_pids: list[int] = field(default_factory=list)   # their CPU (and their children's) is the server's
    broker_pids: list[int] = field(default_factory=list)


def serve_command(data_dir: Path, port: int, db: str | None, broker: Sequence[str]) -> list[str]:
    args = [sys.executable, "-m", "edgeml.fleet.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    if db:
        args += ["--db", db]
    return args + list(broker)


@contextlib.contextmanager
def _server(work: Path, db: str | None, broker: Sequence[str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    data = work / "fleet"
    data.mkdir(parents=True, exist_ok=True)
    log = work / "server.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(serve_command(data, port, db, broker), stdout=out, stderr=subprocess.STDOUT,
                                   env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url, process
    finally:
        stop_process(process, 30)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise SystemExit(f"edgeml-fleet serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"edgeml-fleet serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def embedded(work: Path) -> Iterator[Fleet]:
    from edgeml.fleet.bootstrap import create_first_admin

    db = f"sqlite:///{work / 'fleet' / 'fleet.db'}"
    (work / "fleet").mkdir(parents=True, exist_ok=True)
    admin = create_first_admin(db)
    broker_port = free_port()
    with _server(work, None, ["--broker-port", str(broker_port)]) as (url, process):
        yield Fleet(url, admin, db, "embedded", server_pids=[process.pid])


def mosquitto_config(directory: Path, port: int, files: Path, anonymous: bool = False) -> Path:
    lines = [
        f"pid_file {directory / 'mosquitto.pid'}", "persistence false", "log_dest stderr", "log_type error",
        "log_type warning",
        # With the defaults Mosquitto silently drops QoS 1 messages of a slow subscriber (FACTS.md).
        "max_queued_messages 1000000", "max_inflight_messages 1000", "max_connections -1",
        *(["user root"] if os.geteuid() == 0 else []),
        f"listener {port} 127.0.0.1", f"allow_anonymous {str(anonymous).lower()}",
        *([] if anonymous else [f"password_file {files / 'passwords'}"]), f"acl_file {files / 'acl'}",
    ]
    path = directory / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_mosquitto(directory: Path, port: int, files: Path, anonymous: bool = False) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    config = mosquitto_config(directory, port, files, anonymous)
    with open(directory / "mosquitto.log", "ab") as log:
        process = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_raise_fd_limit)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mosquitto did not start: {(directory / 'mosquitto.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return process


def _raise_fd_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def pg_mosquitto(work: Path) -> Iterator[Fleet]:
    from edgeml.fleet.bootstrap import create_first_admin

    files, broker_dir = work / "mosquitto-files", work / "mosquitto"
    broker_port = free_port()
    with temporary_database("edgeml_bench") as db:
        admin = create_first_admin(db)
        flags = ["--broker", f"mqtt://127.0.0.1:{broker_port}", "--mosquitto-dir", str(files),
                 "--mosquitto-pid-file", str(broker_dir / "mosquitto.pid")]
        with _server(work, db, flags) as (url, process):   # writes the password/ACL files on start
            mosquitto = _start_mosquitto(broker_dir, broker_port, files)
            try:
                yield Fleet(url, admin, db, "pg-mosquitto", server_pids=[process.pid], broker_pids=[mosquitto.pid])
            finally:
                stop_process(mosquitto, 10)


@contextlib.contextmanager
def pg_managed(work: Path, ingest_workers: int = 1) -> Iterator[Fleet]:
    """PostgreSQL + the Mosquitto the server manages itself (``--broker mosquitto``: dynamic security, its
    own config with explicit queue limits), telemetry stored by ``--ingest-workers`` child processes. The
    broker and the ingest workers are the server's children: their CPU counts as the server's."""
    from edgeml.fleet.bootstrap import create_first_admin

    with temporary_database("edgeml_bench") as db:
        admin = create_first_admin(db)
        flags = ["--broker", "mosquitto", "--broker-port", str(free_port()), "--ingest-workers", str(ingest_workers)]
        with _server(work, db, flags) as (url, process):
            yield Fleet(url, admin, db, "pg-managed", server_pids=[process.pid])
