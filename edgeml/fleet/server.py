"""Assemble and run a fleet server: store (migrated), artifacts, broker, Mosquitto file sync, HTTP app."""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from edgeml.errors import FleetError
from edgeml.fleet import bundle_links
from edgeml.fleet.api.limits import RequestLimits
from edgeml.fleet.artifacts import ArtifactStore
from edgeml.fleet.broker import BrokerComponent, EmbeddedBroker, StoreAccounts, parse_broker_url
from edgeml.fleet.broker.accounts import service_credentials
from edgeml.fleet.broker.managed import ManagedMosquitto
from edgeml.fleet.broker.password_sync import PasswordFileSync
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
    broker: str | None = None  # None: embedded broker; "mosquitto": a managed one; else mqtt://host:port
    broker_port: int | None = None  # embedded/managed broker's port; None: 1883 or any free one
    mosquitto_dir: Path | None = None  # keep password/acl files here in sync on enrol/revoke
    mosquitto_pid_file: Path | None = None  # SIGHUP this mosquitto after each sync
    broker_ca: Path | None = None  # CA bundle for an mqtts:// broker (system CAs when None)
    telemetry_retention_days: float = 7.0  # raw telemetry kept this long; hourly roll-ups for good
    online_window_s: float = 120.0
    rollout_poll_s: float = 1.0  # how often the rollout controller reads its wake-up notes (it sleeps otherwise)
    rollout_controller: bool = True  # False: rollouts are recorded but never stepped (tests of the API alone)
    max_bundle_bytes: int = RequestLimits.max_bundle_bytes  # a bundle upload over this is refused (413)
    bundle_mirror: str | None = None  # desired states point devices at <mirror>/<name>/<version>.edgepkg
    ingest: bool = True  # False: telemetry is stored by separate 'edgeml-fleet ingest' workers
    ingest_workers: int = 0  # >0: start that many ingest worker processes instead of ingesting in-process

    def db_url(self) -> str:
        return self.db or sqlite_url(data_paths(self.data_dir)[0])


class FleetServer:
    """Everything but the HTTP listener; ``start``/``stop`` bracket it, :func:`serve` adds uvicorn."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(config.db_url())
        self.accounts = StoreAccounts(self.store)
        if (not config.ingest or config.ingest_workers) and not config.broker:
            raise FleetError("--no-ingest and --ingest-workers need an external or managed broker (--broker "
                             "mqtt://… or --broker mosquitto): the embedded broker hands telemetry to this "
                             "process's own ingest")
        self.broker = self._broker_component()
        self.context = FleetContext(
            store=self.store,
            artifacts=ArtifactStore(data_paths(config.data_dir)[1]),
            broker=BrokerInfo(port=0, host=config.host if not self.external_broker else None),
            online_window_s=config.online_window_s,
        )
        bundle_links.configure(bundle_links.BundleLinks(config.bundle_mirror, self.context.artifacts))
        self.password_sync: PasswordFileSync | None = None
        if isinstance(self.broker, ManagedMosquitto):
            self.context.broker_credentials = self.broker
        elif config.mosquitto_dir is not None:
            # Its own connection pool: it reads the store while enrolments hold connections of the main pool
            # waiting for their turn, and must never wait for one of those.
            self._sync_store = Store.open(config.db_url(), migrate=False)
            self.password_sync = PasswordFileSync(StoreAccounts(self._sync_store), config.mosquitto_dir,
                                                  pid_file=config.mosquitto_pid_file, address=self._device_broker)
            self.context.broker_credentials = self.password_sync
        if isinstance(self.broker, EmbeddedBroker):
            self.context.on_device_revoked.append(self.broker.forget)

    @property
    def external_broker(self) -> bool:
        """A broker someone else runs (--broker mqtt://…), as opposed to one this process starts."""
        return self.config.broker not in (None, "mosquitto")

    def _broker_component(self) -> BrokerComponent:
        config = self.config
        if config.broker == "mosquitto":
            return ManagedMosquitto(self.accounts, config.data_dir / "mosquitto", host=config.host,
                                    port=config.broker_port)
        if config.broker:
            return parse_broker_url(config.broker)
        return EmbeddedBroker(self.accounts, host=config.host, port=config.broker_port)

    def _device_broker(self) -> tuple[str, int, bool, str | None]:
        """Where devices log in, for checking that the broker took a new device's credentials."""
        info = self.context.broker
        return (info.host or "127.0.0.1", info.port, info.tls, str(self.config.broker_ca) if self.config.broker_ca
                else None)

    def _service_host(self) -> str:
        """Where this process's own MQTT clients (ingest, rollouts) reach the broker."""
        host = self.broker.host if self.external_broker else self.config.host
        return "127.0.0.1" if not host or host in ("0.0.0.0", "::") else host

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
        host = self.broker.host if self.external_broker else (None if wildcard else self.config.host)
        self.context.broker = BrokerInfo(port=self.broker.port, host=host, tls=getattr(self.broker, "tls", False))
        if self.password_sync is not None:
            self.password_sync.sync()
        self.ingest = self._start_ingest()
        self.rollouts = self._start_rollouts()

    def _start_ingest(self) -> IngestService | None:
        """Telemetry ingest. On an external broker: a persistent MQTT session of the service account with a
        shared subscription (several server processes split the stream). With the embedded broker: fed
        in-process by the broker itself before it acknowledges a message (see IsolatingBroker), already running
        when this is called."""
        if isinstance(self.broker, EmbeddedBroker):
            assert self.ingest is not None
            self.context.ingest = self.ingest
            return self.ingest
        if not self.config.ingest or self.config.ingest_workers > 0:
            self._start_ingest_workers()
            return None
        creds = service_credentials(self.store)
        ingest = IngestService(self.store, self._service_host(), self.broker.port, creds.username, creds.password,
                               shared=self.external_broker,
                               client_id=f"edgeml-ingest-{socket.gethostname()}-{self.config.port}",
                               tls=getattr(self.broker, "tls", False),
                               ca_file=str(self.config.broker_ca) if self.config.broker_ca else None,
                               raw_retention=timedelta(days=self.config.telemetry_retention_days))
        ingest.start()
        self.context.ingest = ingest
        return ingest

    def _start_ingest_workers(self) -> None:
        """``--ingest-workers N``: child processes on the shared subscription; ``--no-ingest``: none here."""
        from edgeml.fleet.ingest_worker import IngestWorkers

        if self.config.ingest_workers > 0:
            # a managed Mosquitto's URL is known once it runs (its port may have been picked)
            broker_url = self.broker.url if isinstance(self.broker, ManagedMosquitto) else self.config.broker
            assert broker_url is not None
            self.ingest_workers = IngestWorkers(
                self.config.ingest_workers, self.config.db_url(), broker_url,
                name_prefix=f"{socket.gethostname()}-{self.config.port}", broker_ca=self.config.broker_ca,
                telemetry_retention_days=self.config.telemetry_retention_days)
            self.ingest_workers.start()

    def _start_rollouts(self):  # type: ignore[no-untyped-def]
        """The rollout controller, publishing desired states as the service account (it acts only while it
        holds the database lease, so several server processes can all run one)."""
        from edgeml.fleet.rollouts import wakeups
        from edgeml.fleet.rollouts.controller import RolloutController
        from edgeml.fleet.rollouts.publisher import MqttDesiredPublisher

        if not self.config.rollout_controller:
            return None
        creds = service_credentials(self.store)
        publisher = MqttDesiredPublisher(self._service_host(), self.broker.port, creds.username, creds.password,
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
        workers = getattr(self, "ingest_workers", None)
        if workers is not None:
            workers.stop()
        if self.password_sync is not None:
            self._sync_store.close()
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
