"""The MQTT publisher: one I/O thread, one queue, the spool in between.

Producers (the telemetry tick, the update machine) only ``emit`` — a non-blocking queue put and a
one-byte wake-up of the publisher thread; they never touch the network, the spool or a lock held by
paho. The publisher thread owns everything else:
it moves queued messages into the spool (which numbers them), sends spooled messages with QoS 1
within a bounded in-flight window, deletes each from the spool when the broker acknowledges it, and
after any reconnect sends again, in order, whatever was not acknowledged. paho's callbacks run in
this same thread (we drive ``client.loop`` ourselves), so no user code ever runs under paho's locks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edgeml.errors import ConfigError
from edgeml.jsontypes import JSON
from edgeml.protocol import status_topic
from edgeml_agent.telemetry.spool import Spool

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("edgeml_agent.telemetry")


@dataclass(frozen=True)
class BrokerSettings:
    url: str                                  # mqtt://host:port or mqtts://host:port
    device_id: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None               # CA bundle for mqtts:// (system CAs when None)
    cert_file: Path | None = None             # optional client certificate
    key_file: Path | None = None
    keepalive_s: int = 30
    inflight_window: int = 100
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    extra_status: dict[str, JSON] = field(default_factory=dict)

    def host_port_tls(self) -> tuple[str, int, bool]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"telemetry broker '{self.url}' must look like mqtt://host:port or mqtts://host:port")
        tls = parts.scheme == "mqtts"
        return parts.hostname, parts.port or (8883 if tls else 1883), tls


class TelemetryPublisher:
    """Owns the spool and the MQTT connection. ``tick`` (optional) is called from the I/O thread
    about every ``tick_interval_s`` so periodic messages are built there, not in request threads."""

    def __init__(
        self,
        settings: BrokerSettings,
        spool: Spool,
        *,
        tick: Callable[[TelemetryPublisher], None] | None = None,
        tick_interval_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._tick = tick
        self._tick_interval = tick_interval_s
        self._queue: queue.SimpleQueue[tuple[str, Mapping[str, JSON], float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._connected = False
        self._inflight: dict[int, int] = {}       # paho message id -> spool seq
        self._last_sent = 0                       # highest seq handed to paho on this connection
        self._caught_up = False                   # True while the spool holds nothing unsent
        self._acked_batch: list[int] = []
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._pending_subscriptions: list[str] = []
        self.acked = 0                            # messages acknowledged by the broker (for stats/tests)
        self.connects = 0
        # Wakes the I/O thread's wait when another thread emits or stops it. The thread otherwise sleeps
        # until the broker sends something or the next tick: every wake-up of a Python thread on a busy
        # device costs the inference threads a GIL hand-over (measured: waking every 50 ms cost ~5 % of
        # a saturated agent's throughput).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- producer side ---------------------------------------------------------------------------------
    def emit(self, kind: str, body: Mapping[str, JSON]) -> None:
        """Queue a message; it gets its sequence number when the I/O thread spools it."""
        self._queue.put((kind, body, time.time()))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):   # full (a wake-up is already pending) or closed
            self._wake_w.send(b"\0")

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Receive ``topic`` (QoS 1) on every connection. ``callback`` runs in the I/O thread: it must
        only hand the payload over (e.g. put it in a queue), never block."""
        self._subscriptions[topic] = callback
        self._pending_subscriptions.append(topic)  # the I/O thread subscribes (it owns the client)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="edgeml-telemetry", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Spool everything queued, try to deliver it for a short while, then say offline and leave."""
        self._flush_deadline = time.monotonic() + flush_timeout_s
        self._stop.set()
        self._wake()
        if self._thread:
            self._thread.join(flush_timeout_s + 5)

    @property
    def connected(self) -> bool:
        return self._connected

    # -- the I/O thread --------------------------------------------------------------------------------
    @property
    def _mqtt(self) -> Client:
        assert self._client is not None, "the I/O thread runs only after start() made the client"
        return self._client

    def _make_client(self) -> Client:
        import paho.mqtt.client as mqtt

        s = self.settings
        host, port, tls = s.host_port_tls()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.device_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        if s.username:
            client.username_pw_set(s.username, s.password)
        if tls:
            import ssl  # here: an agent without telemetry over TLS does not map OpenSSL (~5 MB resident)

            client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None,
                           certfile=str(s.cert_file) if s.cert_file else None,
                           keyfile=str(s.key_file) if s.key_file else None,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.will_set(status_topic(s.device_id), self._status("offline"), qos=1, retain=True)
        client.max_inflight_messages_set(s.inflight_window)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._host, self._port = host, port
        client.connect_async(host, port, keepalive=s.keepalive_s)  # only records where; _run connects
        return client

    def _status(self, state: str) -> bytes:
        return json.dumps({"state": state, "ts": round(time.time(), 3), **self.settings.extra_status}).encode()

    def _on_connect(self, client: Client, userdata: object, flags: ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self._connected = True
        self.connects += 1
        self._inflight.clear()
        self._last_sent = 0  # resend everything not yet acknowledged, in order
        self._caught_up = False
        client.publish(status_topic(self.settings.device_id), self._status("online"), qos=1, retain=True)
        self._pending_subscriptions = list(self._subscriptions)
        log.info("telemetry connected to %s:%s", self._host, self._port)

    def _on_disconnect(self, client: Client, userdata: object, flags: DisconnectFlags, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        if self._connected and not self._stop.is_set():
            log.warning("telemetry disconnected (%s); spooling until the broker is back", reason_code)
        self._connected = False
        self._inflight.clear()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        callback = self._subscriptions.get(message.topic)
        if callback is not None:
            try:
                callback(bytes(message.payload))
            except Exception:  # a consumer's bug must not kill the I/O thread
                log.exception("handling a message on %s failed", message.topic)

    def _on_publish(self, client: Client, userdata: object, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self._acked_batch.append(seq)  # deleted from the spool in one transaction per loop turn

    def _run(self) -> None:
        backoff = self.settings.reconnect_min_s
        next_connect = 0.0
        next_tick = time.monotonic() + self._tick_interval
        try:
            while True:
                stopping = self._stop.is_set()
                self._drain_queue()
                now = time.monotonic()
                if self._tick and now >= next_tick and not stopping:
                    next_tick = now + self._tick_interval
                    try:
                        self._tick(self)
                    except Exception:  # a telemetry bug must never take the agent down
                        log.exception("building periodic telemetry failed")
                    self._drain_queue()
                if not self._connected and now >= next_connect:
                    # A started attempt gets until the next backoff step for its CONNACK (TLS handshakes
                    # take a while); starting another one earlier would tear the first socket down.
                    self._try_connect()
                    next_connect = now + max(backoff, 2.0)
                    backoff = min(backoff * 2, self.settings.reconnect_max_s)
                if self._connected:
                    backoff = self.settings.reconnect_min_s
                    while self._pending_subscriptions:
                        self._mqtt.subscribe(self._pending_subscriptions.pop(), qos=1)
                    self._fill_window()
                try:
                    if self._connected:
                        # Busy while there is something to send or acknowledge; otherwise sleep until
                        # the broker writes, another thread emits, or the next tick is due.
                        busy = bool(self._inflight) or not self._caught_up or stopping
                        idle = min(max(next_tick - time.monotonic(), 0.0), 1.0) if self._tick else 1.0
                        self._wait(0.005 if busy else idle)
                    self._mqtt.loop(timeout=0.0)   # read (CONNACK too), write, keep-alive: whatever is ready
                except Exception:  # paho raises on sockets dying mid-loop; treat as a disconnect
                    self._connected = False
                self._commit_acks()
                if not self._connected:
                    time.sleep(0.02)
                if stopping and self._flushed():
                    break
        finally:
            self._goodbye()

    def _wait(self, timeout: float) -> None:
        sock = self._mqtt.socket()
        if sock is None:
            return
        pending = getattr(sock, "pending", None)   # TLS: bytes already decrypted need no wait
        if pending is not None and pending():
            return
        writable = [sock] if self._mqtt.want_write() else []
        readable, _, _ = select.select([sock, self._wake_r], writable, [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    def _try_connect(self) -> None:
        try:
            self._mqtt.reconnect()
        except OSError as exc:   # ssl.SSLError included
            log.debug("broker %s:%s unreachable: %s", self._host, self._port, exc)

    def _commit_acks(self) -> None:
        if self._acked_batch:
            self.spool.ack(self._acked_batch)
            self.acked += len(self._acked_batch)
            self._acked_batch = []

    def _drain_queue(self) -> None:
        batch: list[tuple[str, Mapping[str, JSON], float]] = []
        while len(batch) < 1000:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if batch:
            self.spool.append_many(batch)
            self._caught_up = False

    def _fill_window(self) -> None:
        room = self.settings.inflight_window - len(self._inflight)
        if room <= 0 or self._caught_up:
            return
        pending = self.spool.pending(after_seq=self._last_sent, limit=room)
        self._caught_up = len(pending) < room  # nothing more to send until new messages are spooled
        for msg in pending:
            info = self._mqtt.publish(msg.topic, msg.payload, qos=1)
            if info.rc != 0:  # not connected any more: the next connect resends from the oldest
                self._connected = False
                return
            self._inflight[info.mid] = msg.seq
            self._last_sent = msg.seq

    def _flushed(self) -> bool:
        """Stopping may end: nothing is left to send, the flush time is up, or there is no broker to send to."""
        return not len(self.spool) or time.monotonic() >= self._flush_deadline or not self._connected

    def _goodbye(self) -> None:
        while not self._queue.empty():
            self._drain_queue()
        self._commit_acks()
        if self._connected:
            try:
                info = self._mqtt.publish(status_topic(self.settings.device_id), self._status("offline"),
                                            qos=1, retain=True)
                deadline = time.monotonic() + 1.0
                while not info.is_published() and time.monotonic() < deadline:
                    self._mqtt.loop(timeout=0.05)
                self._mqtt.disconnect()
            except Exception:  # best effort: the last-will says offline anyway
                log.debug("clean telemetry disconnect failed", exc_info=True)
        self._connected = False
        self.spool.close()
        self._wake_r.close()
        self._wake_w.close()
