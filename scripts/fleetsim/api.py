"""The fleet's HTTP API as the simulator uses it: enrolment (one-time tokens, then ``POST /v1/enroll``
with each), the bundles and rollout it needs, and the probes timed under load. Every call that depends
on an API detail that may change (pagination, rollout fields) is its own small function."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleetsim.devices import Credentials


def admin_client(url: str, token: str, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {token}"})


@dataclass
class Enrolment:
    devices: list[Credentials] = field(default_factory=list)
    failures: int = 0                                  # HTTP errors or refusals of POST /v1/enroll
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def enroll_devices(url: str, admin: str, group: str, count: int, concurrency: int = 32) -> Enrolment:
    """Create ``count`` one-time tokens, then enrol one device with each, ``concurrency`` at a time."""
    started = time.monotonic()
    result = Enrolment()
    lock = threading.Lock()
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        return local.client   # type: ignore[no-any-return]

    def one(i: int) -> None:
        try:
            creds = _enroll_one(client(), admin, group, i)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            with lock:
                result.failures += 1
                key = str(getattr(getattr(exc, "response", None), "status_code", type(exc).__name__))
                result.errors[key] = result.errors.get(key, 0) + 1
            return
        with lock:
            result.devices.append(creds)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    result.seconds = time.monotonic() - started
    return result


def _enroll_one(http: httpx.Client, admin: str, group: str, i: int) -> Credentials:
    r = http.post("/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"}, json={"group": group})
    r.raise_for_status()
    r = http.post("/v1/enroll", headers={"Authorization": f"Bearer {r.json()['token']}"},
                  json={"name": f"sim-{i}", "hardware": {"arch": "x86_64", "simulated": True},
                        "installed": {"bundles": {"m": "1.0.0"}}})
    r.raise_for_status()
    doc = r.json()
    mqtt = doc["mqtt"]
    return Credentials(doc["device_id"], mqtt["username"], mqtt["password"], mqtt["host"] or "127.0.0.1",
                       int(mqtt["port"]))


def upload_bundles(http: httpx.Client, key_pem: bytes, bundles: Sequence[bytes]) -> None:
    http.post("/v1/keys", json={"name": "bench", "public_pem": key_pem.decode()}).raise_for_status()
    for data in bundles:
        http.post("/v1/bundles", content=data, headers={"Content-Type": "application/octet-stream"}).raise_for_status()


def create_rollout(http: httpx.Client, bundle: str, group: str) -> str:
    """One wave to every device of ``group``, gates that a simulated device passes."""
    r = http.post("/v1/rollouts", json={"bundle": bundle, "group": group, "waves": [100], "observe_s": 0,
                                        "probation_s": 0, "max_latency_regression": 10})
    r.raise_for_status()
    return str(r.json()["id"])


def rollout_state(http: httpx.Client, rollout_id: str) -> dict[str, Any]:
    return dict(http.get(f"/v1/rollouts/{rollout_id}").json())


def list_all_devices(http: httpx.Client, page: int = 500) -> int:
    """Every device, following ``next_cursor`` when the API pages (``GET /v1/devices?limit=&cursor=``);
    a plain list (today's API) is one page."""
    total, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": page}
        if cursor:
            params["cursor"] = cursor
        r = http.get("/v1/devices", params=params)
        r.raise_for_status()
        doc = r.json()
        if isinstance(doc, list):
            return total + len(doc)
        total += len(doc.get("items") or doc.get("devices") or [])
        cursor = doc.get("next_cursor")
        if not cursor:
            return total


class Probes:
    """Calls each endpoint in turn, over and over, in a thread, and keeps every latency (seconds) and
    every failure. ``endpoints`` can change while it runs (the rollout status appears mid-run)."""

    def __init__(self, http: httpx.Client, pause_s: float = 0.5) -> None:
        self.http, self.pause_s = http, pause_s
        self.endpoints: dict[str, Callable[[httpx.Client], object]] = {
            "GET /v1/devices (all pages)": list_all_devices,
            "GET /v1/health": lambda h: h.get("/v1/health").raise_for_status(),
            "GET /healthz": lambda h: h.get("/healthz").raise_for_status(),
        }
        self.latencies: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, call in list(self.endpoints.items()):
                started = time.perf_counter()
                try:
                    call(self.http)
                    self.latencies.setdefault(name, []).append(time.perf_counter() - started)
                except httpx.HTTPError:
                    self.failures[name] = self.failures.get(name, 0) + 1
            self._stop.wait(self.pause_s)
