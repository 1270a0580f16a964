"""A lean HTTP/1.1 keep-alive client and a closed-loop load generator, for the benchmarks only.

Why not http.client or httpx: they spend 0.1-0.3 ms of Python per request (header objects, an
email-based response parser, two writes per request), which on a 2-core machine is the same order as
the server overhead being measured and steals the CPU the server needs under load. This client sends one
pre-built request with a single ``sendall`` and reads the response by Content-Length, so what it
measures is the server and the loopback, not the client.
"""

from __future__ import annotations

import os
import socket
import threading
import time


class RawHttpClient:
    """One keep-alive connection that repeats one request."""

    def __init__(self, port: int, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._buf = bytearray()

    def call(self) -> tuple[int, dict[str, str], bytes]:
        """Send the request once; return status, headers (lower-case names) and body."""
        self.sock.sendall(self.request)
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        need = end + 4 + int(headers.get("content-length", "0"))
        while len(buf) < need:
            self._fill()
        body = bytes(buf[end + 4:need])
        del buf[:need]
        return status, headers, body

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buf += chunk

    def close(self) -> None:
        self.sock.close()


def closed_loop_throughput(port: int, path: str, body: bytes, headers: dict[str, str], clients: int,
                           seconds: float) -> float:
    """Requests per second that ``clients`` connections, each sending its next request as soon as the
    previous answer arrives, get through in ``seconds``. Any non-200 answer is an error."""
    conns = [RawHttpClient(port, "POST", path, body, headers) for _ in range(clients)]
    for c in conns:       # warm: the first request on a connection pays for the server's thread start
        status, _, data = c.call()
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
    counts = [0] * clients
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        conn = conns[i]
        start.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                status, _, data = conn.call()
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
                counts[i] += 1
        except Exception as exc:  # reported below, after every thread has stopped
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    stop_at[0] = begin + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    for c in conns:
        c.close()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    return sum(counts) / elapsed


def main() -> None:
    """Run a closed loop from its own process (so the load's CPU is not the server's GIL) and print
    the requests per second as the last line."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--headers", default="{}", help="JSON object of extra request headers")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None, help="run on this CPU only")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rate = closed_loop_throughput(args.port, args.path, args.body_file.read_bytes(), json.loads(args.headers),
                                  args.clients, args.seconds)
    print(f"{rate:.3f}")


if __name__ == "__main__":
    main()
