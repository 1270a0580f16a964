"""The broker the fleet server uses: an embedded amqtt broker (default) or an external one (--broker URL).

Both share one small interface (``start``/``stop``/``port``/``host``) so the server, and later the
telemetry ingest, do not care which one runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from edgeml.errors import ConfigError, FleetError
from edgeml.fleet.broker.accounts import BrokerAccounts

log = logging.getLogger(__name__)
DEFAULT_PORT = 1883
REVOKE_TIMEOUT_S = 5.0  # the promise: a revoked device is off the broker within 5 s


class BrokerComponent(Protocol):
    host: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class ExternalBroker:
    """A broker someone else runs (Mosquitto, EMQX): nothing to start, only where it is."""

    host: str
    port: int
    tls: bool = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def parse_broker_url(url: str) -> ExternalBroker:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ConfigError(f"--broker must look like mqtt://host:port or mqtts://host:port, not '{url}'")
    tls = parsed.scheme == "mqtts"
    return ExternalBroker(parsed.hostname, parsed.port or (8883 if tls else 1883), tls)


def port_is_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on (host, port); a wildcard host is tried on loopback."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _any_free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """amqtt in its own thread and event loop, enforcing the fleet's accounts and topic rules.

    ``port=None`` means "1883, or any free port if 1883 is taken" (a system Mosquitto often owns 1883);
    an explicit port that is taken is an error naming the port and the option.
    """

    def __init__(self, accounts: BrokerAccounts, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self._explicit_port = port is not None
        self.port = port if port is not None else DEFAULT_PORT
        self._accounts = accounts
        self._key = uuid.uuid4().hex
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: object | None = None
        # receives every message a client may publish, before it is acknowledged (set before start)
        self.tap: Callable[[str, bytes], None] | None = None

    def _config(self) -> dict[str, object]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "edgeml.fleet.broker.plugins.FleetAuthPlugin": {"accounts": self._key},
                "edgeml.fleet.broker.plugins.FleetTopicPlugin": {"accounts": self._key},
            },
        }

    def start(self) -> None:
        from edgeml.fleet.broker import plugins

        if not port_is_free(self.host, self.port):
            if self._explicit_port:
                raise FleetError(f"MQTT port {self.host}:{self.port} is already in use: pick another with "
                                 "--broker-port, or use that broker with --broker mqtt://host:port")
            self.port = _any_free_port(self.host)
            log.warning("MQTT port %d is taken; the embedded broker listens on %d instead", DEFAULT_PORT, self.port)
        plugins.ACCOUNTS[self._key] = self._accounts
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            from edgeml.fleet.broker.amqtt_broker import IsolatingBroker

            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                broker = IsolatingBroker(self._config(), loop=self._loop, on_receipt=self._received)
                plugins.DISCONNECTORS[self._key] = broker.disconnect_user
                self._loop.run_until_complete(broker.start())
                self._broker = broker
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="edgeml-embedded-broker", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            self.stop()
            cause = failure[0] if failure else TimeoutError("the broker did not start within 30 s")
            raise FleetError(f"the embedded MQTT broker could not start on {self.host}:{self.port}: {cause}") from cause

    def _received(self, session: Any, topic: str, payload: bytes) -> None:
        """A client sent a message (called before the broker acknowledges it): hand it to the ingest if the
        sender may publish there; what it may not is refused by the topic plugin as usual."""
        from edgeml.fleet.broker import plugins

        if self.tap is not None and plugins.may_publish(self._key, session.username, topic):
            self.tap(topic, payload)

    def forget(self, username: str) -> None:
        """A device was revoked: withdraw its topic rights, refuse its logins, close its connections.

        Returns once its connections are closed, so the revoke request answers after the device is off.
        """
        from edgeml.fleet.broker import plugins

        plugins.revoke(self._key, username)
        loop, disconnect = self._loop, plugins.DISCONNECTORS.get(self._key)
        if loop is None or disconnect is None or not loop.is_running():
            return
        closing = asyncio.run_coroutine_threadsafe(disconnect(username), loop)
        try:
            closed = closing.result(timeout=REVOKE_TIMEOUT_S)
        except Exception:
            # Its rights are gone already and it cannot log in again; it only holds a socket.
            log.exception("could not close the connections of revoked device %s", username)
            return
        log.info("revoked device %s: closed %d broker connection(s)", username, closed)

    def stop(self) -> None:
        from edgeml.fleet.broker import plugins

        loop, thread, broker = self._loop, self._thread, self._broker
        if loop is not None and thread is not None and thread.is_alive():
            if broker is not None:
                drained = asyncio.run_coroutine_threadsafe(_quiesce(broker), loop)
                try:
                    drained.result(timeout=10)
                except Exception:
                    log.warning("the embedded broker did not finish its accepted messages in time", exc_info=True)
                future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)  # type: ignore[attr-defined]
                try:
                    future.result(timeout=10)
                except Exception:
                    log.exception("the embedded broker did not shut down cleanly")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if loop is not None and not loop.is_running():
            loop.close()
        self._loop = self._thread = self._broker = None
        plugins.ACCOUNTS.pop(self._key, None)
        plugins.DISCONNECTORS.pop(self._key, None)


async def _quiesce(broker: Any, timeout_s: float = 5.0) -> None:
    """Stop reading from clients, then let the broker deliver what it already acknowledged.

    amqtt answers a QoS 1 PUBLISH with PUBACK as soon as it is queued for delivery; shutting down with
    messages still queued would lose messages their senders consider delivered. So: pause every
    connection's socket reads (nothing new arrives, nothing new is acknowledged), then wait until every
    session's delivery queue is empty.
    """
    sessions = list(getattr(broker, "_sessions", {}).values())
    for _, handler in sessions:
        stream_writer = getattr(getattr(handler, "writer", None), "_writer", None)
        transport = getattr(stream_writer, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    quiet_since = None
    while loop.time() < deadline:
        if all(session.delivered_message_queue.qsize() == 0 for session, _ in sessions):
            quiet_since = quiet_since or loop.time()
            if loop.time() - quiet_since >= 0.2:  # bytes already buffered have been parsed too
                return
        else:
            quiet_since = None
        await asyncio.sleep(0.01)
