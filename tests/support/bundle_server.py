"""A small real HTTP server that serves bundle files with Range support, the way the fleet does, and
can misbehave on purpose (cut the body short, send more than declared, ignore Range), plus a
desired-state document at /v1/devices/me/desired for agents that poll.

    with BundleServer(directory) as server:
        server.url("m-2.0.0.edgepkg"); server.behaviour = "truncate"; server.desired = wire_bytes
        server.plan = ["truncate", "ignore-range"]   # the next two bundle requests, then `behaviour`
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class BundleServer:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.behaviour = "normal"          # normal | truncate | oversize | ignore-range | error
        self.plan: list[str] = []          # behaviours for the next bundle requests, one each, then `behaviour`
        self.desired: bytes | None = None
        self.requests: list[tuple[str, str | None]] = []   # (path, Range header)
        self.authorization: list[str | None] = []            # each request's Authorization header
        self.bytes_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                outer.authorization.append(self.headers.get("Authorization"))
                if self.path == "/v1/devices/me/desired":
                    body = outer.desired or b""
                    self.send_response(200 if body else 204)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                path = outer.directory / self.path.lstrip("/")
                behaviour = outer.plan.pop(0) if outer.plan and path.is_file() else outer.behaviour
                if not path.is_file() or behaviour == "error":
                    self.send_response(404 if behaviour != "error" else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and behaviour != "ignore-range":
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if behaviour == "oversize":
                    body = body + b"\0" * 4096
                if behaviour == "truncate":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    outer.bytes_sent += len(body) // 2
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.bytes_sent += len(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def __enter__(self) -> BundleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
