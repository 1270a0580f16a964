"""Store-and-forward of captured samples: bulk bytes over HTTP to the fleet, a small notice over MQTT.

The uploader thread sends the spool's oldest samples, one ``PUT /v1/captures/{id}`` each (the device's
token; the body is the sample's ``.npz``). The fleet keys a sample by (device, capture id), so sending one
again — after a crash between the upload and the spool's removal, or an answer lost in an outage — stores
it once and answers "already stored". Only after the fleet answered 200/201 is the notice published (an
``event`` of kind ``capture`` on the device's events topic, itself spooled until the broker has it) and
the sample removed from the spool. A transient failure (connection, 408/429/5xx) backs off and retries;
a refusal (another 4xx: too large, malformed) drops that sample, counted, so one bad file cannot block the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from edgeml_agent.capture.spool import CaptureSpool, SpooledCapture
from edgeml_agent.services import EventSink

log = logging.getLogger("edgeml_agent.capture")

# 401/403: the token may be fixed (re-enrolment); the samples wait rather than being dropped
TRANSIENT = {401, 403, 408, 425, 429, 500, 502, 503, 504}

# (url, body, headers, timeout) -> HTTP status; raises OSError-like HttpUnreachable on a network failure
PutBytes = Callable[[str, bytes, Mapping[str, str], float], int]


class UploadUnreachable(Exception):
    """The fleet could not be reached (or stopped answering): retry later."""


def httpx_put(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    import httpx

    try:
        return httpx.put(url, content=body, headers=dict(headers), timeout=timeout).status_code
    except httpx.TransportError as exc:
        raise UploadUnreachable(f"{url}: {exc}") from exc


class CaptureUploader:
    def __init__(self, spool: CaptureSpool, server_url: str, api_token: str, events: EventSink, *,
                 put: PutBytes = httpx_put, min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 timeout_s: float = 30.0) -> None:
        self.spool = spool
        self.base = server_url.rstrip("/") + "/v1/captures/"
        self.headers = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/octet-stream"}
        self.events = events
        self.put = put
        self.min_backoff_s, self.max_backoff_s, self.timeout_s = min_backoff_s, max_backoff_s, timeout_s
        self.uploaded = 0
        self.refused = 0
        self.wake = threading.Event()   # the writer sets it after each new sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgeml-capture-upload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 2)

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            try:
                sent_all = self.send_pending()
                backoff = self.min_backoff_s
                if sent_all:
                    self.wake.wait(5.0)
                    self.wake.clear()
            except UploadUnreachable as exc:
                log.debug("capture upload deferred: %s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception:   # a bug here must not end the thread: the samples stay spooled
                log.exception("capture upload failed")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def send_pending(self) -> bool:
        """Send what the spool holds, oldest first; True when it is empty. Raises :class:`UploadUnreachable`."""
        while not self._stop.is_set():
            batch = self.spool.pending()
            if not batch:
                return True
            for capture in batch:
                self._send(capture)
        return False

    def _send(self, capture: SpooledCapture) -> None:
        try:
            body = capture.path.read_bytes()
        except FileNotFoundError:   # dropped by the quota between listing and reading
            self.spool.remove(capture.id)
            return
        status = self.put(self.base + capture.id, body, self.headers, self.timeout_s)
        if status in TRANSIENT:
            raise UploadUnreachable(f"the fleet answered {status}")
        if status in (200, 201):
            self.uploaded += 1
            self.events.event("capture", capture_id=capture.id, model=capture.model, version=capture.version,
                              trigger=capture.trigger, size=capture.size, new=status == 201)
        else:
            self.refused += 1
            log.error("the fleet refused captured sample %s (HTTP %d); dropped", capture.id, status)
            self.events.event("capture_refused", capture_id=capture.id, status=status)
        self.spool.remove(capture.id)
