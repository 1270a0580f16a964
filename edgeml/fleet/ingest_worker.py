"""Telemetry ingest as its own process: ``edgeml-fleet ingest``, or N of them started by ``serve --ingest-workers N``.

Each worker is one :class:`~edgeml.fleet.ingest.IngestService` on the broker's shared subscription
(``$share/edgeml-ingest/…``): the broker hands each message to one worker of the group, the workers
write to the same database, and the (device, seq) key plus the acknowledgement after commit mean that
nothing is lost or doubled, however many workers run on however many machines. A worker's name must
be stable across restarts and unique in the group: it names its persistent MQTT session (messages that
arrive while it is down wait for it on the broker) and its rows of the per-minute roll-up.

The API process then carries no ingest CPU; with the embedded broker ingest stays in the server process
(the embedded broker hands messages over in-process, it has no shared subscriptions).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from edgeml.errors import ConfigError
from edgeml.fleet.ingest import IngestService
from edgeml.fleet.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    db_url: str
    broker_url: str
    name: str
    broker_ca: Path | None = None
    telemetry_retention_days: float = 7.0
    batch_size: int = 500


def default_worker_name() -> str:
    return socket.gethostname()


def build_ingest(store: Store, config: WorkerConfig) -> IngestService:
    """An ingest service on the shared subscription of ``config.broker_url``, as the fleet's service account."""
    from edgeml.fleet.broker import parse_broker_url
    from edgeml.fleet.broker.accounts import service_credentials

    broker = parse_broker_url(config.broker_url)
    creds = service_credentials(store)
    return IngestService(store, broker.host or "127.0.0.1", broker.port, creds.username, creds.password,
                         shared=True, client_id=f"edgeml-ingest-{config.name}", tls=broker.tls,
                         ca_file=str(config.broker_ca) if config.broker_ca else None,
                         batch_size=config.batch_size,
                         raw_retention=timedelta(days=config.telemetry_retention_days))


def run_worker(config: WorkerConfig, stop: threading.Event | None = None) -> None:
    """Ingest until SIGTERM/SIGINT (or ``stop``), then write and acknowledge what was received."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    store = Store.open(config.db_url)
    ingest = build_ingest(store, config)
    ingest.start()
    try:
        if ingest.connected.wait(30):
            print(f"edgeml-fleet ingest '{config.name}': subscribed on {config.broker_url}", flush=True)
        else:
            print(f"edgeml-fleet ingest '{config.name}': cannot reach the broker at {config.broker_url} yet; "
                  "retrying", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        ingest.stop()
        store.close()
        log.info("ingest worker '%s' stopped: %s", config.name, ingest.stats)


class IngestWorkers:
    """``serve --ingest-workers N``: N ``edgeml-fleet ingest`` child processes, stopped with the server."""

    def __init__(self, count: int, db_url: str, broker_url: str | None, *, name_prefix: str,
                 broker_ca: Path | None = None, telemetry_retention_days: float = 7.0) -> None:
        if broker_url is None:
            raise ConfigError("--ingest-workers needs an external broker (--broker mqtt://…): the embedded broker "
                              "hands telemetry to the server process itself")
        self.commands = [[sys.executable, "-m", "edgeml.fleet.cli", "ingest", "--db", db_url, "--broker", broker_url,
                          "--name", f"{name_prefix}-{i}", "--telemetry-retention-days", str(telemetry_retention_days),
                          *(["--broker-ca", str(broker_ca)] if broker_ca else [])] for i in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.processes = [subprocess.Popen(cmd, env=dict(os.environ)) for cmd in self.commands]

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM: each worker writes and acknowledges what it holds, then exits."""
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("ingest worker %d did not stop in %.0f s: killed (the broker redelivers)", p.pid, timeout_s)
                p.kill()
                p.wait()
