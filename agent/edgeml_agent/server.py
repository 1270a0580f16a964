"""The HTTP server carrying :class:`~edgeml_agent.api.Api`: stdlib, keep-alive, low overhead, drainable.

Why the standard library (socketserver, not http.server): a request costs a fraction of a millisecond of
agent time (scripts/bench_agent.py measures it), with no dependency to install on the device. Each
connection gets a thread (clients keep connections alive, so that is one thread per client); the
response goes out in a single ``sendall`` with TCP_NODELAY, because header and body in two writes
meet Nagle's algorithm and delayed ACKs and cost 40 ms.

Draining (SIGTERM): stop accepting connections, close idle keep-alive connections, let every request
already read finish and answer it with ``Connection: close``, then return. A request counts as
*accepted* once its request line is read; :attr:`AgentHTTPServer.accepted` and ``answered`` let a test
check that none was lost.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from http import HTTPStatus

from edgeml_agent.api import Api
from edgeml_agent.exchange import Request, Response, error_response

log = logging.getLogger("edgeml_agent.server")


class _Connection:
    __slots__ = ("busy", "dropped", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy = False        # a request on it has been accepted and is not answered yet
        self.dropped = False     # closed by the drain while idle


class Handler(socketserver.StreamRequestHandler):
    """One connection, HTTP/1.1 with keep-alive. Parsed here directly rather than with http.server: its
    email-based header parser alone costs ~0.1 ms a request, and http.server pulls in http.client, ssl
    and email, several MB of resident memory the agent does not need."""

    server: AgentHTTPServer
    timeout = 300            # an idle keep-alive connection is closed after 5 minutes
    MAX_LINE = 65536
    MAX_HEADERS = 100

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = _Connection(self.request)
        self.close_connection = False
        self.command = self.path = ""
        self.server.register(self.conn)

    def handle(self) -> None:
        while not self.close_connection:
            self.handle_one_request()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.unregister(self.conn)

    def handle_one_request(self) -> None:
        try:
            line = self.rfile.readline(self.MAX_LINE + 1)
        except OSError:      # timeout, reset, or shut down by the drain
            line = b""
        if not line or not self.server.accept_request(self.conn):
            self.close_connection = True
            return
        self.received = time.perf_counter()
        try:
            self._request(line)
        except OSError:
            self.close_connection = True
        finally:
            self.server.request_done(self.conn)

    def _request(self, line: bytes) -> None:
        parts = line.decode("latin-1").split()
        if len(line) > self.MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.close_connection = True
            self._send(error_response(400, "malformed HTTP request line"))
            return
        self.command, self.path, version = parts
        headers: dict[str, str] = {}
        for _ in range(self.MAX_HEADERS + 1):
            raw = self.rfile.readline(self.MAX_LINE + 1)
            if not raw:   # the client went away in the middle of its headers
                self.close_connection = True
                return
            if raw in (b"\r\n", b"\n"):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or len(raw) > self.MAX_LINE:
                self.close_connection = True
                self._send(error_response(400, "malformed HTTP header line"))
                return
            headers[name.strip().lower()] = value.strip()
        else:
            self.close_connection = True
            self._send(error_response(431, f"more than {self.MAX_HEADERS} header lines"))
            return
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        self._serve(headers)

    def _serve(self, headers: dict[str, str]) -> None:
        api = self.server.api
        denied = api.authorize(self.path.split("?", 1)[0], headers)
        if denied is not None:
            self._discard_body(headers)
            self._send(denied)
            return
        body = b""
        if self.command in ("POST", "PUT", "PATCH"):
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.close_connection = True
                self._send(error_response(411, "chunked bodies are not accepted; send Content-Length"))
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                self._send(error_response(400, "Content-Length is not a valid number"))
                return
            if length > self.server.max_body_bytes:
                # Do not read it: the connection is closed after the answer instead.
                self.close_connection = True
                self._send(error_response(413, f"the body is {length} bytes; this agent accepts at most "
                                               f"{self.server.max_body_bytes} (server.max_body_bytes)"))
                return
            if headers.get("expect", "").lower() == "100-continue":   # curl, for bodies over 1 KB
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = self.rfile.read(length)
            if len(body) != length:
                self.close_connection = True
                return
        self._send(api.handle(Request(self.command, self.path, headers, body, self.received)))

    def _discard_body(self, headers: dict[str, str]) -> None:
        """Skip an unwanted body so the connection stays usable, or close it if that is not cheap."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            return
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = 0
        if 0 < length <= self.server.max_body_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _send(self, resp: Response) -> None:
        if self.server.draining:
            self.close_connection = True
        head = [f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
                f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        if self.close_connection:
            head.append("Connection: close")
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
        except OSError:  # the client went away; nothing to answer to
            self.close_connection = True
        else:
            self.server.answered_one()
        if resp.after is not None:
            resp.after()   # observers run even when the client left: the request still happened


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class AgentHTTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: Api, max_body_bytes: int) -> None:
        self.api = api
        self.max_body_bytes = max_body_bytes
        self.draining = False
        self.accepted = 0
        self.answered = 0
        self._serving = False
        self._conns: set[_Connection] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        super().__init__(address, Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    # -- connection bookkeeping (called from handler threads) -----------------------------------------
    def register(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.add(conn)

    def unregister(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)
            self._idle.notify_all()

    def accept_request(self, conn: _Connection) -> bool:
        with self._lock:
            if conn.dropped:
                return False
            conn.busy = True
            self.accepted += 1
            return True

    def request_done(self, conn: _Connection) -> None:
        with self._lock:
            conn.busy = False
            self._idle.notify_all()

    def answered_one(self) -> None:
        with self._lock:
            self.answered += 1

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._serving = True
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="http-accept", daemon=True)
        thread.start()
        return thread

    def drain(self, timeout: float) -> bool:
        """Stop accepting, finish accepted requests, close connections. True if all finished in time."""
        self.draining = True
        self.api.draining = True
        if self._serving:
            self.shutdown()        # the accept loop stops...
        self.socket.close()        # ...and new connections are refused from here on
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for conn in self._conns:
                    if not conn.busy and not conn.dropped:
                        # Idle keep-alive connection: its thread is blocked reading the next request.
                        conn.dropped = True
                        with contextlib.suppress(OSError):
                            conn.sock.shutdown(socket.SHUT_RDWR)
                if not self._conns:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("drain timed out with %d connection(s) still busy", len(self._conns))
                    return False
                self._idle.wait(min(remaining, 0.1))
