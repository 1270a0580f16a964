"""Run ``edgeml-fleet serve`` as a real process on free ports (for CLI, restart and agent tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.services import free_port, stop_process


@dataclass
class ServerProcess:
    url: str
    port: int
    broker_port: int
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def fleet_server(data_dir: Path, *, db: str | None = None, port: int | None = None,
                 broker_port: int | None = None, extra_args: Sequence[str] = ()) -> Iterator[ServerProcess]:
    port, broker_port = port or free_port(), broker_port or free_port()
    args = [sys.executable, "-m", "edgeml.fleet.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    if not any(str(a).startswith("mqtt") for a in extra_args):  # an external broker has its port in its URL
        args += ["--broker-port", str(broker_port)]
    if db:
        args += ["--db", db]
    args += extra_args
    log = data_dir.parent / f"server-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    server = ServerProcess(f"http://127.0.0.1:{port}", port, broker_port, process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"edgeml-fleet serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"edgeml-fleet serve did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        stop_process(process, 15)
