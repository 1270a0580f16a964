"""A minimal MQTT 3.1.1 client on asyncio, for simulating thousands of devices in one process.

paho runs one socket per client and wants a thread (or a select loop) per client: 10,000 of them do
not fit on 2 cores. This client is one ``asyncio.Protocol`` per connection on a shared event loop and
speaks only what a device needs: CONNECT (user/password, clean session, retained last will), PUBLISH
QoS 0/1 with PUBACK tracking, SUBSCRIBE QoS 1, incoming QoS 1 PUBLISH (answered with PUBACK) and
keep-alive pings. It is a load generator against a real broker, not a product client: the agent keeps
using paho with its disk spool.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, keepalive: int,
                   will: tuple[str, bytes] | None = None) -> bytes:
    flags = 0x02 | 0x80 | 0x40  # clean session, username, password
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (1 << 3) | 0x20  # will, QoS 1, retained
        payload += _str(will[0]) + _str(will[1])
    payload += _str(username) + _str(password)
    return packet(CONNECT, 0, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int = 0, retain: bool = False,
                   dup: bool = False) -> bytes:
    flags = (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    return packet(PUBLISH, flags, _str(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload)


@dataclass
class ClientStats:
    connects: int = 0
    refused: int = 0          # CONNACK with a non-zero return code (bad credentials, not authorised)
    disconnects: int = 0


class MqttClient(asyncio.Protocol):
    """One device's connection. ``publish_qos1`` returns a future that resolves on the broker's PUBACK;
    messages still unacknowledged when the connection drops are sent again (DUP) after ``connect``."""

    def __init__(self, client_id: str, username: str, password: str, *, keepalive: int = 60,
                 will: tuple[str, bytes] | None = None, on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.client_id, self.username, self.password = client_id, username, password
        self.keepalive, self.will, self.on_message = keepalive, will, on_message
        self.stats = ClientStats()
        self.transport: asyncio.Transport | None = None
        self.inflight: dict[int, tuple[bytes, asyncio.Future[None]]] = {}
        self._next_id = 0
        self._buffer = bytearray()
        self._connack: asyncio.Future[int] | None = None
        self._suback: dict[int, asyncio.Future[None]] = {}
        self.closed = asyncio.Event()

    # -- protocol callbacks ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.closed.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.stats.disconnects += 1
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError("connection closed before CONNACK"))
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            parsed = _split(self._buffer)
            if parsed is None:
                return
            header, body, used = parsed
            del self._buffer[:used]
            self._handle(header >> 4, header & 0x0F, body)

    def _handle(self, kind: int, flags: int, body: bytes) -> None:
        if kind == CONNACK and self._connack is not None and not self._connack.done():
            self._connack.set_result(body[1])
        elif kind == PUBACK:
            entry = self.inflight.pop(struct.unpack("!H", body[:2])[0], None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(None)
        elif kind == SUBACK:
            future = self._suback.pop(struct.unpack("!H", body[:2])[0], None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == PUBLISH:
            self._incoming(flags, body)

    def _incoming(self, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 3
        (topic_len,) = struct.unpack("!H", body[:2])
        topic = body[2:2 + topic_len].decode()
        rest = body[2 + topic_len:]
        if qos:
            packet_id, rest = rest[:2], rest[2:]
            self._write(packet(PUBACK, 0, packet_id))
        if self.on_message is not None:
            self.on_message(topic, bytes(rest))

    # -- operations --------------------------------------------------------------------------------------
    async def connect(self, host: str, port: int, timeout: float = 30.0) -> int:
        """Open the connection and wait for CONNACK; returns its return code (0: accepted)."""
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: self, host, port), timeout)
        self._connack = loop.create_future()
        self._write(connect_packet(self.client_id, self.username, self.password, self.keepalive, self.will))
        code = await asyncio.wait_for(self._connack, timeout)
        if code:
            self.stats.refused += 1
            self.close()
            return code
        self.stats.connects += 1
        # resend what the broker never acknowledged, in order, flagged as a duplicate
        for _, (data, _f) in sorted(self.inflight.items(), key=lambda kv: kv[0]):
            self._write(bytes([data[0] | 0x08]) + data[1:])
        return 0

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.inflight and self._next_id not in self._suback:
                return self._next_id
        raise RuntimeError("65535 messages in flight")

    def publish_qos1(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future[None]:
        packet_id = self._packet_id()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        data = publish_packet(topic, payload, 1, packet_id, retain)
        self.inflight[packet_id] = (data, future)
        self._write(data)
        return future

    async def subscribe(self, topic: str, timeout: float = 30.0) -> None:
        packet_id = self._packet_id()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._suback[packet_id] = future
        self._write(packet(SUBSCRIBE, 2, struct.pack("!H", packet_id) + _str(topic) + bytes([1])))
        await asyncio.wait_for(future, timeout)

    def ping(self) -> None:
        self._write(packet(PINGREQ, 0, b""))

    def disconnect(self) -> None:
        self._write(packet(DISCONNECT, 0, b""))
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


def _split(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """(first byte, body, bytes used) of the first complete packet in ``buffer``, or None."""
    if len(buffer) < 2:
        return None
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            break
    if len(buffer) < index + length:
        return None
    return buffer[0], bytes(buffer[index:index + length]), index + length
