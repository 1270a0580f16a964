"""Rollouts at fleet scale: create latency, fan-out time to a real Mosquitto, idle CPU with a running rollout.

    python scripts/bench_rollouts.py                  # 10,000 devices, SQLite and PostgreSQL
    python scripts/bench_rollouts.py --quick          # 2,000 devices, shorter idle window
    python scripts/bench_rollouts.py --devices 5000 --db postgres --idle-s 60

For each database: a real ``edgeml-fleet serve`` process on an external Mosquitto (explicit
max_queued_messages / max_inflight_messages), N devices enrolled straight into its database (this measures
rollouts, not enrolment), a signed bundle pushed through the API, then one rollout of it to every device in a
single wave (``waves=[100]``). Reported:

* create: the POST /v1/rollouts round trip (the API only records the rollout; the controller does the rest),
  for the server's second rollout; the first (one device, aborted at once) is shown as "cold";
* acked: until the database says the broker acknowledged every device's desired state (``published_at``);
* delivered: until a separate MQTT subscriber on ``edgeml/v1/+/desired`` received one for every device
  (a sample of them is verified against the fleet key, addressed to its device, naming the bundle);
* idle CPU: the server process's CPU over ``--idle-s`` seconds with nothing happening, before any rollout
  and then with the rollout still running (its wave waits for installs that never come).

PostgreSQL: 127.0.0.1:5432 (a database of its own, dropped afterwards). Loopback only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from edgeml.bundle import SigningKey  # noqa: E402
from edgeml.bundle.keys import TrustStore  # noqa: E402
from edgeml.desired import parse_desired  # noqa: E402
from edgeml.fleet.bootstrap import create_first_admin  # noqa: E402
from edgeml.fleet.store import Store  # noqa: E402
from edgeml.fleet.store.models import DesiredDocument, Device  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.mosquitto import running_mosquitto  # noqa: E402
from tests.support.postgres import temporary_database  # noqa: E402
from tests.support.services import free_port, stop_process  # noqa: E402
from tests.support.tiny_models import tiny_mlp  # noqa: E402


@dataclass
class Result:
    db: str
    devices: int
    create_cold_ms: float
    create_ms: float
    acked_s: float | None
    delivered_s: float | None
    verified: int
    idle_cpu_none: float
    idle_cpu_running: float


class Subscriber:
    """Counts the devices that got a desired state on the broker (retained, QoS 1)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.seen: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watch", clean_session=True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edgeml/v1/+/desired", qos=1)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        device = msg.topic.split("/")[2]  # type: ignore[attr-defined]
        if not device.startswith("dev"):
            return   # the warm-up rollout's device
        with self.lock:
            self.seen[device] = msg.payload  # type: ignore[attr-defined]

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def enrol_directly(db: str, n: int) -> list[str]:
    """N devices in group 'bench' and one in group 'warm' (bulk insert: enrolment is another benchmark's
    subject)."""
    store = Store.open(db)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    ids = [f"dev{i:06d}" for i in range(n)]
    with store.session() as s:
        s.execute(Device.__table__.insert(), [
            {"id": d, "name": d, "group_name": "bench", "tags": [], "hardware": {},
             "installed": {"bundles": {"m": "1.0.0"}}, "enrolled_at": t0 + timedelta(milliseconds=i),
             "mqtt_password_hash": "x"} for i, d in enumerate(ids)])
        s.execute(Device.__table__.insert(), [{"id": "warm0", "name": "warm0", "group_name": "warm", "tags": [],
                                               "hardware": {}, "installed": {}, "enrolled_at": t0,
                                               "mqtt_password_hash": "x"}])
    store.close()
    return ids


@contextmanager
def server(data: Path, db: str, broker_port: int) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    log = data.parent / "server.log"
    args = [sys.executable, "-m", "edgeml.fleet.cli", "serve", "--data-dir", str(data), "--port", str(port),
            "--db", db, "--broker", f"mqtt://127.0.0.1:{broker_port}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "agent")])}
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fleet server did not come up:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, psutil.Process(process.pid)
    finally:
        stop_process(process, 30)


def cpu_percent(proc: psutil.Process, seconds: float) -> float:
    """The process's CPU (all threads, user + system) over ``seconds``, in % of one core."""
    before, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, t1 = proc.cpu_times(), time.monotonic()
    return 100.0 * ((after.user - before.user) + (after.system - before.system)) / (t1 - t0)


def wait_until(condition: object, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def acked(db: str, rollout_id: str) -> int:
    from sqlalchemy import func, select

    store = Store.open(db, migrate=False)
    try:
        with store.session() as s:
            return int(s.scalar(select(func.count()).select_from(DesiredDocument).where(
                DesiredDocument.rollout_id == rollout_id, DesiredDocument.published_at.is_not(None))) or 0)
    finally:
        store.close()


def verify_sample(db: str, seen: dict[str, bytes], bundle_id: str, sample: int = 200) -> int:
    from edgeml.fleet.rollouts.desired_docs import fleet_signing_key

    store = Store.open(db, migrate=False)
    trust = TrustStore([fleet_signing_key(store).public_key])
    store.close()
    ok = 0
    for device, wire in list(seen.items())[:sample]:
        doc = parse_desired(wire, trust, device_id=device)
        ok += doc.models[0].sha256 == bundle_id
    return ok


def warm_up(http: httpx.Client) -> float:
    """The first rollout on a fresh server (one device, aborted at once); returns its create time (ms): the
    first request pays for imports and caches, so the timed rollout is the second."""
    t0 = time.monotonic()
    r = http.post("/v1/rollouts", json={"bundle": "m@2.0.0", "group": "warm", "waves": [100]})
    cold_ms = (time.monotonic() - t0) * 1000
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    assert http.post(f"/v1/rollouts/{rollout_id}/abort", json={}).status_code == 200
    assert wait_until(lambda: http.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "aborted", 60) is not None
    return cold_ms


def run_one(kind: str, db: str, n: int, idle_s: float, tmp: Path) -> Result:
    key = SigningKey.generate()
    bundle = make_bundle(tmp / "m-2.edgepkg", key, tiny_mlp(tmp / "m.onnx", seed=1), version="2.0.0")
    admin = create_first_admin(db)
    enrol_directly(db, n)
    with ExitStack() as stack:
        broker = stack.enter_context(running_mosquitto(tmp / "mosquitto"))
        url, proc = stack.enter_context(server(tmp / "data", db, broker.port))
        http = stack.enter_context(httpx.Client(base_url=url, timeout=120,
                                                headers={"Authorization": f"Bearer {admin}"}))
        assert http.post("/v1/keys", json={"name": "bench", "public_pem": key.public_pem().decode()}).status_code == 201
        r = http.post("/v1/bundles", content=bundle.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        bundle_id = r.json()["id"]
        create_cold_ms = warm_up(http)
        time.sleep(2)
        idle_none = cpu_percent(proc, idle_s)
        watch = Subscriber(broker.port)
        stack.callback(watch.stop)
        t0 = time.monotonic()
        r = http.post("/v1/rollouts", json={"bundle": "m@2.0.0", "group": "bench", "waves": [100],
                                            "observe_s": 3600, "wave_timeout_s": 86400})
        create_ms = (time.monotonic() - t0) * 1000
        assert r.status_code == 201, r.text
        rollout_id = r.json()["id"]
        delivered_s = wait_until(lambda: watch.count() >= n, 300)
        acked_s = wait_until(lambda: acked(db, rollout_id) >= n, 300 - (delivered_s or 300) + 5)
        acked_s = None if acked_s is None else acked_s + (delivered_s or 0)
        verified = verify_sample(db, dict(watch.seen), bundle_id)
        time.sleep(2)
        idle_running = cpu_percent(proc, idle_s)
        status = http.get(f"/v1/rollouts/{rollout_id}").json()
        assert status["state"] == "running" and status["counts"].get("sent") == n, status["counts"]
    return Result(kind, n, create_cold_ms, create_ms, acked_s, delivered_s, verified, idle_none, idle_running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=None, help="default 10000 (2000 with --quick)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--idle-s", type=float, default=None, help="idle CPU window (default 30 s, 10 s with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    n = args.devices or (2000 if args.quick else 10000)
    idle_s = args.idle_s or (10.0 if args.quick else 30.0)
    results = []
    for kind in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
        with tempfile.TemporaryDirectory(prefix=f"bench-rollouts-{kind}-") as d:
            tmp = Path(d)
            if kind == "sqlite":
                results.append(run_one(kind, f"sqlite:///{tmp / 'fleet.db'}", n, idle_s, tmp))
            else:
                with temporary_database("edgeml_bench") as url:
                    results.append(run_one(kind, url, n, idle_s, tmp))
        print(f"done: {results[-1]}", flush=True)
    fmt = "{:<9} {:>8} {:>15} {:>10} {:>10} {:>13} {:>9} {:>12} {:>15}"
    print(fmt.format("db", "devices", "create ms (2)", "(cold)", "acked s", "delivered s", "verified", "idle CPU %",
                     "idle CPU % (1)"))
    for r in results:
        print(fmt.format(r.db, r.devices, f"{r.create_ms:.0f}", f"{r.create_cold_ms:.0f}",
                         f"{r.acked_s:.1f}" if r.acked_s else "-",
                         f"{r.delivered_s:.1f}" if r.delivered_s else "-", f"{r.verified}/200",
                         f"{r.idle_cpu_none:.2f}", f"{r.idle_cpu_running:.2f}"))
    print("(1) with the rollout running (its only wave waits for installs); 'idle CPU %' before any rollout")
    print("(2) the timed rollout is the server's second; (cold): its first, a one-device rollout (imports, caches)")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
