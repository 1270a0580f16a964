"""Publish signed desired states retained, QoS 1, on ``edgeml/v1/<device>/desired`` as the fleet's
service account.

paho's own network thread does the I/O; callers only ``publish`` (which never blocks on the network).
A document counts as published only when handed to a connected client; the controller re-publishes
the others on its next tick, and everything after a reconnect (a restarted broker forgets retained
messages).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from edgeml.protocol import desired_topic

log = logging.getLogger(__name__)


class DesiredPublisher(Protocol):
    def publish(self, device_id: str, wire: bytes) -> bool:
        """True when the broker will get it (queued on a live connection)."""
        ...

    def take_resync(self) -> bool:
        """True once after each (re)connect: every current document should be published again."""
        ...


class MqttDesiredPublisher:
    def __init__(self, host: str, port: int, username: str, password: str, *, client_id: str,
                 tls: bool = False, ca_file: str | None = None) -> None:
        self.host, self.port, self.tls, self.ca_file = host, port, tls, ca_file
        self.username, self.password, self.client_id = username, password, client_id
        self.connected = threading.Event()
        self._resync = threading.Event()
        self._client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.reconnect_delay_set(1, 5)
        self._client = client
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("the broker refused the rollout publisher: %s", reason_code)
            return
        self.connected.set()
        self._resync.set()

    def publish(self, device_id: str, wire: bytes) -> bool:
        if self._client is None or not self.connected.is_set():
            return False
        info = self._client.publish(desired_topic(device_id), wire, qos=1, retain=True)
        return bool(info.rc == 0)

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
