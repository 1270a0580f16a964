"""A reverse proxy in front of a real server that records every request (method, path, status): the
request log of what a device asked the fleet for. Streams bodies both ways; loopback only.

    with RecordingProxy("http://127.0.0.1:8480") as proxy:
        ... point the device at proxy.url ...; proxy.log == [("GET", "/v1/...", 200), ...]
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.log: list[tuple[str, str, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                with httpx.Client(timeout=60) as client, client.stream(
                        self.command, outer.upstream + self.path, headers=headers, content=body) as answer:
                    data = answer.read()
                    outer.log.append((self.command, self.path, answer.status_code))
                    self.send_response(answer.status_code)
                    for k, v in answer.headers.items():
                        if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def paths(self, prefix: str) -> list[tuple[str, str, int]]:
        return [entry for entry in self.log if entry[1].startswith(prefix)]

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
