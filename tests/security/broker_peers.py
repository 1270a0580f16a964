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


def raw_connect(port: int, username: str, password: str, *, client_id: str | None = None,
                will: tuple[str, bytes] | None = None, timeout: float = 10.0) -> tuple[socket.socket, int]:
    """A bare MQTT 3.1.1 CONNECT (clean session, keepalive 30 s; with ``will``: a retained QoS 1 last will)
    and its CONNACK. Returns the open socket and the CONNACK return code (0 = accepted, -1 = no CONNACK)."""
    flags = 0x80 | 0x40 | 0x02  # user name, password, clean session
    will_part = b""
    if will is not None:
        flags |= 0x20 | (1 << 3) | 0x04  # will retain, will QoS 1, will
        will_part = _utf8(will[0]) + _bytes(will[1])
    body = (_utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
            + _utf8(client_id or f"raw-{time.monotonic_ns()}") + will_part + _utf8(username) + _utf8(password))
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            return sock, -1  # closed without a CONNACK: refused outright
        connack += chunk
    return sock, connack[3]


def connect_with_will_and_vanish(port: int, username: str, password: str, *, will_topic: str,
                                 will_payload: bytes) -> int:
    """Log in with a retained last will, then drop the TCP connection without DISCONNECT so the broker
    fires the will. Returns the CONNACK return code."""
    sock, code = raw_connect(port, username, password, will=(will_topic, will_payload))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not DISCONNECT
    return code


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the broker closed this connection (EOF or reset), False if it is still open after
    ``timeout`` seconds. Nothing is expected to arrive: the connection subscribed to nothing."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
