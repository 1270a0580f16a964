"""Publish signed desired states retained, QoS 1, on ``edgeml/v1/<device>/desired`` as the fleet's
service account — pipelined, and with a record of what the broker acknowledged.

``publish`` hands a document to paho and returns without waiting for the broker: up to ``window``
documents may be outstanding (queued in paho or in flight, at most ``max_inflight`` of them on the
wire), so a wave of 10,000 devices streams at the broker's pace instead of one round trip per device;
past the window ``publish`` waits for acknowledgements (the caller is the controller's own thread, never
a request). Each PUBACK is kept as (device, serial) until :meth:`take_acked`, from which the controller
records which devices got their document. A connection that drops forgets what was outstanding: those
documents stay unacknowledged in the database and are published again after the reconnect, with every
other current document (a restarted broker forgets retained messages).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from edgeml.protocol import desired_topic

log = logging.getLogger(__name__)


class DesiredPublisher(Protocol):
    def publish(self, device_id: str, serial: int, wire: bytes) -> bool:
        """True when handed to a live connection (the broker's acknowledgement comes later)."""
        ...

    def take_acked(self) -> list[tuple[str, int]]:
        """The (device, serial) pairs the broker acknowledged since the last call."""
        ...

    def take_resync(self) -> bool:
        """True once after each (re)connect: every current document should be published again."""
        ...


class MqttDesiredPublisher:
    def __init__(self, host: str, port: int, username: str, password: str, *, client_id: str,
                 tls: bool = False, ca_file: str | None = None, max_inflight: int = 500, window: int = 5000,
                 window_wait_s: float = 30.0) -> None:
        self.host, self.port, self.tls, self.ca_file = host, port, tls, ca_file
        self.username, self.password, self.client_id = username, password, client_id
        self.max_inflight, self.window, self.window_wait_s = max_inflight, window, window_wait_s
        self.connected = threading.Event()
        self.on_change: Callable[[], None] = lambda: None   # (re)connected, or everything outstanding acked
        self._resync = threading.Event()
        self._lock = threading.Condition()
        self._outstanding: dict[int, tuple[str, int]] = {}   # mid → (device, serial)
        self._early: set[int] = set()                         # PUBACKs that beat publish() back to its caller
        self._acked: list[tuple[str, int]] = []
        self._client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file)
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.reconnect_delay_set(1, 5)
        self._client = client
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("the broker refused the rollout publisher: %s", reason_code)
            return
        with self._lock:
            self._early.clear()
        self.connected.set()
        self._resync.set()
        self.on_change()

    def _on_disconnect(self, *args: Any) -> None:
        self.connected.clear()
        with self._lock:   # a clean session: nothing outstanding will be acknowledged any more
            self._outstanding.clear()
            self._early.clear()
            self._lock.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            item = self._outstanding.pop(mid, None)
            if item is None:
                self._early.add(mid)
                return
            self._acked.append(item)
            drained = not self._outstanding
            self._lock.notify_all()
        if drained:
            self.on_change()

    def publish(self, device_id: str, serial: int, wire: bytes) -> bool:
        if self._client is None or not self.connected.is_set():
            return False
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._outstanding) < self.window or not self.connected.is_set(),
                                       self.window_wait_s) or not self.connected.is_set():
                return False
        info = self._client.publish(desired_topic(device_id), wire, qos=1, retain=True)
        if info.rc != 0:
            return False
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._acked.append((device_id, serial))
            else:
                self._outstanding[info.mid] = (device_id, serial)
        return True

    def outstanding(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def take_acked(self) -> list[tuple[str, int]]:
        with self._lock:
            acked, self._acked = self._acked, []
        return acked

    def take_resync(self) -> bool:
        if self._resync.is_set():
            self._resync.clear()
            return True
        return False

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
