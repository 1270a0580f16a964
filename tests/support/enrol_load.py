"""Concurrent enrolments against a running fleet server, and the audit that nothing was left half-done.

``enrol_concurrently`` creates N one-time tokens, then spends them all at once from ``workers`` threads
(each a real HTTP client). ``audit_enrolments`` then checks the invariants the fleet promises:

- no failures (every request answered 201; a 503 "try again" is retried by the caller like an agent does
  and counted separately);
- no orphans: every used token has its device, every device in the store has a used token, and every
  device in the store can log in to the broker with the password it was given.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from edgeml.fleet.store import Store
from edgeml.fleet.store.models import Device, EnrollmentToken


@dataclass
class EnrolmentRun:
    requested: int = 0
    enrolled: dict[str, str] = field(default_factory=dict)  # device id -> MQTT password
    failures: list[str] = field(default_factory=list)  # "status: detail" of requests that never succeeded
    retried: int = 0  # 503 answers (nothing changed, try again) that a retry then turned into a 201
    latencies_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    broker_port: int = 0


@dataclass
class EnrolmentAudit:
    devices_in_store: int
    used_tokens: int
    tokens_without_device: list[str]
    devices_without_token: list[str]
    cannot_log_in: list[str]

    @property
    def orphans(self) -> int:
        return len(self.tokens_without_device) + len(self.devices_without_token) + len(self.cannot_log_in)


def enrol_concurrently(url: str, admin_token: str, count: int, *, workers: int = 32,
                       retries: int = 3) -> EnrolmentRun:
    run = EnrolmentRun(requested=count)
    auth = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        tokens = [http.post("/v1/enrollment-tokens", headers=auth, json={"group": "load"}).json()["token"]
                  for _ in range(count)]
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=60)
        for attempt in range(retries + 1):
            started = time.monotonic()
            r = local.http.post("/v1/enroll", headers={"Authorization": f"Bearer {tokens[i]}"},
                                json={"name": f"load-{i}", "hardware": {}, "installed": {}})
            with lock:
                run.latencies_s.append(time.monotonic() - started)
                if r.status_code == 201:
                    doc = r.json()
                    run.enrolled[doc["device_id"]] = doc["mqtt"]["password"]
                    run.broker_port = doc["mqtt"]["port"]
                    run.retried += attempt
                    return
            if r.status_code != 503 or attempt == retries:
                with lock:
                    run.failures.append(f"{r.status_code}: {r.text[:200]}")
                return
            time.sleep(float(r.headers.get("Retry-After", "1")))

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    run.seconds = time.monotonic() - started
    return run


def audit_enrolments(db_url: str, run: EnrolmentRun, broker: tuple[str, int]) -> EnrolmentAudit:
    from edgeml.fleet.broker.password_sync import login_accepted

    store = Store.open(db_url, migrate=False)
    try:
        with store.session() as s:
            devices = set(s.scalars(select(Device.id)))
            used = dict(s.execute(select(EnrollmentToken.id, EnrollmentToken.device_id)
                                  .where(EnrollmentToken.used_at.is_not(None))).all())
    finally:
        store.close()
    token_devices = set(used.values())
    cannot = [d for d in sorted(devices)
              if d not in run.enrolled or login_accepted((*broker, False, None), d, run.enrolled[d]) is not True]
    return EnrolmentAudit(devices_in_store=len(devices), used_tokens=len(used),
                          tokens_without_device=[t for t, d in used.items() if d not in devices],
                          devices_without_token=sorted(devices - token_devices), cannot_log_in=cannot)
