"""Telemetry ingest: the fleet's MQTT subscriber that writes device messages into the store exactly once.

- With an external broker the subscription is shared (``$share/edgeml-ingest/…``), so several server
  processes on one database split the stream between them.
- Sessions are persistent (clean_session off, a stable client id per server process) and QoS 1 is
  acknowledged *manually*, only after the batch holding the message is committed: a server that dies
  mid-batch gets the messages again, and the (device, seq) key drops any duplicate.
- paho's network thread only queues messages; one writer thread decodes, batches and inserts.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError

from edgeml.fleet.store import Store
from edgeml.fleet.telemetry_rollups import ReferenceCache
from edgeml.fleet.telemetry_store import Envelope, prune_in_batches, record_statuses, store_messages
from edgeml.protocol import ROOT, device_from_topic

log = logging.getLogger(__name__)

SHARE_GROUP = "edgeml-ingest"


@dataclass(frozen=True)
class _Tapped:
    """A message handed over in-process by the embedded broker (nothing to acknowledge)."""

    topic: str
    payload: bytes
    qos: int = 0
    mid: int = 0


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class IngestService:
    def __init__(self, store: Store, host: str, port: int, username: str, password: str, *, shared: bool,
                 client_id: str | None = None, tls: bool = False, ca_file: str | None = None,
                 batch_size: int = 500, flush_interval_s: float = 0.05,
                 raw_retention: timedelta = timedelta(days=7)) -> None:
        self.store = store
        self.host, self.port, self.tls, self.ca_file = host, port, tls, ca_file
        self.username, self.password = username, password
        self.shared = shared
        self.client_id = client_id or f"edgeml-ingest-{socket.gethostname()}-{port}"
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.raw_retention = raw_retention
        self.stats = IngestStats()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._client: Any = None
        self._references = ReferenceCache()
        # names this process's rows of the per-minute roll-up (several ingest processes never share one)
        self.writer = self.client_id[-64:]
        self.connected = threading.Event()

    def topics(self) -> list[str]:
        prefix = f"$share/{SHARE_GROUP}/" if self.shared else ""
        # status is retained state, not a stream: every server process reads all of it
        return [f"{prefix}{ROOT}/+/telemetry", f"{prefix}{ROOT}/+/events", f"{ROOT}/+/status"]

    def start_tapped(self) -> None:
        """Run without an MQTT session: the embedded broker hands messages over through :meth:`offer`."""
        self._writer = threading.Thread(target=self._run, name="edgeml-ingest", daemon=True)
        self._writer.start()
        self.connected.set()

    def offer(self, topic: str, payload: bytes) -> None:
        """Take one message the embedded broker accepted (called on the broker's thread: only queues)."""
        parsed = device_from_topic(topic)
        if parsed is not None and parsed[1] in ("telemetry", "events", "status"):
            self._queue.put(_Tapped(topic, payload))

    def start(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file)
        client.manual_ack_set(True)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = lambda c, u, msg: self._queue.put(msg)
        client.reconnect_delay_set(1, 5)
        self._client = client
        self._writer = threading.Thread(target=self._run, name="edgeml-ingest", daemon=True)
        self._writer.start()
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("telemetry ingest: the broker refused the service account (%s)", reason_code)
            return
        for topic in self.topics():
            client.subscribe(topic, qos=1)
        self.connected.set()
        log.info("telemetry ingest subscribed on %s:%d (%s)", self.host, self.port,
                 "shared" if self.shared else "single server")

    def stop(self) -> None:
        """Write what was received, acknowledge it, then leave (the session stays on the broker)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(15)
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()

    # -- writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        next_prune = time.monotonic() + 60
        while True:
            batch = self._take_batch()
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                return
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 3600
                self._prune()

    def _take_batch(self) -> list[Any]:
        batch: list[Any] = []
        try:
            batch.append(self._queue.get(timeout=0.2))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self.flush_interval_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return batch

    def _write(self, messages: list[Any]) -> None:
        envelopes: list[Envelope] = []
        statuses: list[tuple[str, str]] = []
        for msg in messages:
            self.stats.received += 1
            parsed = device_from_topic(msg.topic)
            try:
                doc = json.loads(msg.payload)
                if parsed is None:
                    raise ValueError("not an edgeml topic")
                device_id, leaf = parsed
                if leaf == "status":
                    statuses.append((device_id, str(doc.get("state", "unknown"))))
                    continue
                envelopes.append(Envelope.parse(device_id, doc))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                self.stats.rejected += 1   # never stored, never redelivered: acknowledged below
        stored = self._store_batch(envelopes, statuses, len(messages))
        if stored is None:
            return  # stopping with the database still failing: not acknowledged, the broker redelivers it
        self.stats.stored += stored
        self.stats.duplicates += len(envelopes) - stored
        self.stats.batches += 1
        for e in envelopes:
            self.stats.by_kind[e.kind] = self.stats.by_kind.get(e.kind, 0) + 1
        for msg in messages:
            if msg.qos > 0 and self._client is not None:
                self._client.ack(msg.mid, msg.qos)

    def _store_batch(self, envelopes: list[Envelope], statuses: list[tuple[str, str]], size: int) -> int | None:
        """Store the batch, retrying until the database takes it: a message the broker acknowledged (the
        embedded broker hands it over with no redelivery) must never be dropped because the database was
        busy for a moment. Only a stop with the database still failing gives up (None)."""
        attempt = 0
        while True:
            try:
                with self.store.session() as session:
                    stored = store_messages(session, envelopes, writer=self.writer, references=self._references)
                    record_statuses(session, statuses)
                return stored
            except (IntegrityError, OperationalError) as exc:
                # another server process created a derived row (hourly roll-up, drift score) first, or
                # the DB is busy: try again; the next attempt sees the rows that won the race.
                attempt += 1
                if self._stop.is_set() and attempt >= 5:
                    log.error("telemetry ingest stopped before the database took a batch of %d", size)
                    return None
                log_at = log.warning if attempt % 20 == 0 else log.debug
                log_at("ingest batch of %d, retry %d: %s", size, attempt, exc)
                time.sleep(min(0.05 * attempt, 1.0))

    def _prune(self) -> None:
        try:
            removed = prune_in_batches(self.store, self.raw_retention)
            if removed:
                log.info("telemetry retention: removed %d raw rows older than %s", removed, self.raw_retention)
        except OperationalError:
            log.warning("telemetry retention pass failed; will try again", exc_info=True)
