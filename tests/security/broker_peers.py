"""MQTT clients for the broker isolation attacks: a paho peer that notes when the broker drops it, and a
raw-socket CONNECT that leaves a last-will behind (paho reconnects on its own, so it cannot die abnormally)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

from tests.fleet.mqtt_checks import Peer, connect


@dataclass
class WatchedPeer:
    """A connected peer plus the moment the broker closed its connection (None while connected)."""

    peer: Peer
    dropped_at: float | None = None

    def __post_init__(self) -> None:
        self._dropped = threading.Event()

        def on_disconnect(_c, _u, _f, _reason, _p) -> None:
            if self.dropped_at is None:
                self.dropped_at = time.monotonic()
            self._dropped.set()
            # paho would try to reconnect for ever: stop it from the callback's own thread
            self.peer.client.reconnect_delay_set(min_delay=60, max_delay=120)

        self.peer.client.on_disconnect = on_disconnect

    def wait_dropped(self, timeout: float) -> bool:
        return self._dropped.wait(timeout)

    def close(self) -> None:
        self.peer.client.disconnect()
        self.peer.client.loop_stop()


def watched(port: int, username: str, password: str) -> WatchedPeer:
    peer, why = connect(port, username, password)
    assert peer is not None, why
    return WatchedPeer(peer)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _bytes(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_with_will_and_vanish(port: int, username: str, password: str, *, will_topic: str,
                                 will_payload: bytes, timeout: float = 10.0) -> int:
    """MQTT 3.1.1 CONNECT carrying a retained QoS 1 will, read the CONNACK, then drop the TCP connection
    without DISCONNECT so the broker fires the will. Returns the CONNACK return code (0 = accepted)."""
    flags = 0x80 | 0x40 | 0x20 | (1 << 3) | 0x04 | 0x02  # user, password, will retain, will QoS 1, will, clean
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    payload = (_utf8(f"will-{time.monotonic_ns()}") + _utf8(will_topic) + _bytes(will_payload)
               + _utf8(username) + _utf8(password))
    body = variable + payload
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                return -1  # closed without a CONNACK: refused outright
            connack += chunk
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN+DISCONNECT
    return connack[3]
