"""Assemble and run a fleet server: store (migrated), artifacts, broker, Mosquitto file sync, HTTP app."""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from edgeml.errors import FleetError
from edgeml.fleet.api.limits import RequestLimits
from edgeml.fleet.artifacts import ArtifactStore
from edgeml.fleet.broker import (
    BrokerComponent,
    EmbeddedBroker,
    StoreAccounts,
    mosquitto_files,
    parse_broker_url,
    write_mosquitto_files,
)
from edgeml.fleet.broker.accounts import service_credentials
from edgeml.fleet.context import BrokerInfo, FleetContext, data_paths
from edgeml.fleet.ingest import IngestService
from edgeml.fleet.store import Store, sqlite_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8480
    db: str | None = None  # None: SQLite file in data_dir
    broker: str | None = None  # None: embedded broker; else mqtt://host:port of an external one
    broker_port: int | None = None  # embedded broker's port; None: 1883 or any free one
    mosquitto_dir: Path | None = None  # keep password/acl files here in sync on enrol/revoke
    mosquitto_pid_file: Path | None = None  # SIGHUP this mosquitto after each sync
    broker_ca: Path | None = None  # CA bundle for an mqtts:// broker (system CAs when None)
    telemetry_retention_days: float = 7.0  # raw telemetry kept this long; hourly roll-ups for good
    online_window_s: float = 120.0
    rollout_poll_s: float = 1.0  # how often the rollout controller reads its wake-up notes (it sleeps otherwise)
    rollout_controller: bool = True  # False: rollouts are recorded but never stepped (tests of the API alone)
    max_bundle_bytes: int = RequestLimits.max_bundle_bytes  # a bundle upload over this is refused (413)

    def db_url(self) -> str:
        return self.db or sqlite_url(data_paths(self.data_dir)[0])


class FleetServer:
    """Everything but the HTTP listener; ``start``/``stop`` bracket it, :func:`serve` adds uvicorn."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(config.db_url())
        self.accounts = StoreAccounts(self.store)
        self.broker: BrokerComponent
        if config.broker:
            self.broker = parse_broker_url(config.broker)
        else:
            self.broker = EmbeddedBroker(self.accounts, host=config.host, port=config.broker_port)
        self.context = FleetContext(
            store=self.store,
            artifacts=ArtifactStore(data_paths(config.data_dir)[1]),
            broker=BrokerInfo(port=0, host=config.host if not config.broker else None),
            online_window_s=config.online_window_s,
        )
        if config.mosquitto_dir is not None:
            self.context.on_credentials_changed.append(self.sync_mosquitto)
        if isinstance(self.broker, EmbeddedBroker):
            self.context.on_device_revoked.append(self.broker.forget)

    def sync_mosquitto(self) -> None:
        assert self.config.mosquitto_dir is not None
        write_mosquitto_files(self.config.mosquitto_dir, mosquitto_files(self.accounts.password_lines()),
                              pid_file=self.config.mosquitto_pid_file)

    def start(self) -> None:
        self.ingest: IngestService | None = None
        if isinstance(self.broker, EmbeddedBroker):
            self.ingest = IngestService(self.store, "", 0, "", "", shared=False,
                                        raw_retention=timedelta(days=self.config.telemetry_retention_days))
            self.ingest.start_tapped()
            self.broker.tap = self.ingest.offer
        self.broker.start()
        # A wildcard bind tells devices nothing: they then use the host name they reached the API with.
        wildcard = self.config.host in ("0.0.0.0", "::")
        host = self.broker.host if self.config.broker else (None if wildcard else self.config.host)
        self.context.broker = BrokerInfo(port=self.broker.port, host=host, tls=getattr(self.broker, "tls", False))
        if self.config.mosquitto_dir is not None:
            self.sync_mosquitto()
        self.ingest = self._start_ingest()
        self.rollouts = self._start_rollouts()

    def _start_ingest(self) -> IngestService:
        """Telemetry ingest. On an external broker: a persistent MQTT session of the service account with a
        shared subscription (several server processes split the stream). With the embedded broker: fed
        in-process by the broker itself (see FleetIngestTap), already running when this is called."""
        if isinstance(self.broker, EmbeddedBroker):
            assert self.ingest is not None
            self.context.ingest = self.ingest
            return self.ingest
        creds = service_credentials(self.store)
        host = self.broker.host if self.config.broker else "127.0.0.1"
        ingest = IngestService(self.store, host or "127.0.0.1", self.broker.port, creds.username, creds.password,
                               shared=bool(self.config.broker),
                               client_id=f"edgeml-ingest-{socket.gethostname()}-{self.config.port}",
                               tls=getattr(self.broker, "tls", False),
                               ca_file=str(self.config.broker_ca) if self.config.broker_ca else None,
                               raw_retention=timedelta(days=self.config.telemetry_retention_days))
        ingest.start()
        self.context.ingest = ingest
        return ingest

    def _start_rollouts(self):  # type: ignore[no-untyped-def]
        """The rollout controller, publishing desired states as the service account (it acts only while it
        holds the database lease, so several server processes can all run one)."""
        from edgeml.fleet.rollouts import wakeups
        from edgeml.fleet.rollouts.controller import RolloutController
        from edgeml.fleet.rollouts.publisher import MqttDesiredPublisher

        if not self.config.rollout_controller:
            return None
        creds = service_credentials(self.store)
        host = (self.broker.host if self.config.broker else "127.0.0.1") or "127.0.0.1"
        publisher = MqttDesiredPublisher(host, self.broker.port, creds.username, creds.password,
                                         client_id=f"edgeml-rollouts-{socket.gethostname()}-{self.config.port}",
                                         tls=getattr(self.broker, "tls", False),
                                         ca_file=str(self.config.broker_ca) if self.config.broker_ca else None)
        publisher.start()
        controller = RolloutController(self.store, publisher, poll_s=self.config.rollout_poll_s)
        # a device enrolled or revoked may join or leave a selector
        self.context.on_credentials_changed.append(lambda: wakeups.note_and_ring(self.store, wakeups.MEMBERSHIP))
        controller.start()
        return controller

    def stop(self) -> None:
        rollouts = getattr(self, "rollouts", None)
        if rollouts is not None:
            rollouts.stop()
            rollouts.publisher.stop()
        # The broker goes first (devices spool what they cannot send), then ingest writes what it already
        # received. Its session is persistent: an external broker keeps queueing for it while it is away.
        self.broker.stop()
        ingest = getattr(self, "ingest", None)
        if ingest is not None:
            ingest.stop()
        self.store.close()

    def app(self):  # type: ignore[no-untyped-def]
        from edgeml.fleet.app import create_app

        return create_app(self.context, RequestLimits(max_bundle_bytes=self.config.max_bundle_bytes))


def serve(config: ServerConfig) -> None:
    """Run until interrupted (SIGINT/SIGTERM), then stop the broker and close the store."""
    import uvicorn

    from edgeml.fleet.broker.component import port_is_free

    # uvicorn would only log "address already in use" and exit: say which option changes it instead.
    if not port_is_free(config.host, config.port):
        raise FleetError(f"the API port {config.host}:{config.port} is already in use: pick another with --port")
    server = FleetServer(config)
    try:
        server.start()
        log.info("MQTT broker on %s:%d", server.broker.host, server.broker.port)
        print(f"edgeml-fleet: API on http://{config.host}:{config.port}  MQTT on "
              f"{server.broker.host}:{server.broker.port}  data in {config.data_dir}", flush=True)
        uv = uvicorn.Server(uvicorn.Config(server.app(), host=config.host, port=config.port, log_level="warning",
                                           access_log=False))
        # uvicorn catches SIGTERM, shuts down, then raises it again against the handler it found. With
        # the default one that kills the process before the `finally` below: the embedded broker would
        # never finish the messages it acknowledged, nor the ingest write them. So the handler it finds
        # is this one, which lets the shutdown go on.
        signal.signal(signal.SIGTERM, _shutdown_in_progress)
        uv.run()
    finally:
        server.stop()


def _shutdown_in_progress(signum: int, frame: object) -> None:
    log.info("signal %d: stopping the broker and writing what it accepted", signum)
