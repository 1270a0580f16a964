#!/usr/bin/env python3
"""Benchmark over-the-air updates through a real fleet server and a real agent, in one run, one table.

  (1) end-to-end update time for a ~12 MB bundle on loopback: from the moment the fleet published the
      signed desired state (retained, QoS 1) to the agent's ``committed`` event (download, verify,
      stage, smoke test, switch, probation of 1 s), taken from the fleet's own records;
  (2) failed requests during the update under constant load (4 client threads, goal 0);
  (3) extra bytes on the wire when a download is cut at 50 % and resumed with HTTP Range (goal <= 5 %
      of the bundle): a byte-counting TCP proxy in front of the fleet server cuts the first connection
      after half the bundle, the agent's own downloader resumes, and everything that crossed the proxy
      (headers included) minus the bundle size is the overhead.

Usage: ``python scripts/bench_ota.py``  (about a minute; needs the fleet and agent extras).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGEML_HOME", tempfile.mkdtemp(prefix="edgeml-bench-ota-home-"))

import httpx  # noqa: E402

from edgeml.bundle import SigningKey  # noqa: E402
from edgeml.fleet.bootstrap import create_first_admin  # noqa: E402
from tests.agent.agent_process import AGENT_CLI, AgentProcess, install, write_config  # noqa: E402
from tests.fleet.server_process import fleet_server  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.services import free_port  # noqa: E402
from tests.updates.helpers import slow_model  # noqa: E402

WIDTH = 1800          # 4 -> 1800 -> 1800 -> 3 float32 MatMuls: ~13 MB of weights, a ~12 MB bundle


def big_mlp(path: Path, seed: int) -> Path:
    """A model whose bundle is large enough for the download to dominate an update."""
    return slow_model(path, layers=1, width=WIDTH, seed=seed)


def installed_version(installed: dict[str, Any]) -> str | None:
    bundles = installed.get("bundles")
    return bundles.get("m") if isinstance(bundles, dict) and "m" in bundles else installed.get("m")


class CuttingProxy:
    """Forwards one TCP port to another, counts the bytes sent to the client, and can cut the first
    connection after ``cut_after`` of them (a real mid-download network cut, not a simulated one)."""

    def __init__(self, target_port: int, cut_after: int | None) -> None:
        self.target_port, self.cut_after = target_port, cut_after
        self.to_client = 0
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.cut_after if self.connections == 1 else None
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True, cut), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool, cut: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut is not None and sent + len(data) >= cut:
                    data = data[: cut - sent]
                    dst.sendall(data)
                    self.to_client += len(data)
                    break
                dst.sendall(data)
                sent += len(data)
                if count:
                    self.to_client += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


def measure_resume(server_url: str, port: int, token: str, bundle_id: str, size: int, work: Path) -> dict[str, Any]:
    from edgeml.errors import UpdateError
    from edgeml_agent.updates.download import download

    # The proxy cuts the first connection once half the bundle (plus the response headers) went through.
    proxy = CuttingProxy(port, cut_after=size // 2)
    url = f"http://127.0.0.1:{proxy.port}/v1/bundles/{bundle_id}/download"
    dest = work / "resumed.edgepkg"
    headers = {"Authorization": f"Bearer {token}"}
    attempts = 0
    try:
        while True:
            attempts += 1
            try:
                download(url, dest, expected_size=size, expected_sha256=bundle_id, headers=headers)
                break
            except UpdateError:
                if attempts >= 3:
                    raise
    finally:
        proxy.close()
    return {"attempts": attempts, "wire_bytes": proxy.to_client, "extra": proxy.to_client - size}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgeml-bench-ota-"))
    key = SigningKey.generate()
    v1 = make_bundle(work / "m-1.edgepkg", key, big_mlp(work / "v1.onnx", 0), version="1.0.0")
    v2 = make_bundle(work / "m-2.edgepkg", key, big_mlp(work / "v2.onnx", 1), version="2.0.0")
    size = v2.stat().st_size
    data = work / "fleet"
    data.mkdir()
    admin = create_first_admin(f"sqlite:///{data / 'fleet.db'}")
    with fleet_server(data) as server, httpx.Client(base_url=server.url, timeout=60,
                                                     headers={"Authorization": f"Bearer {admin}"}) as http:
        http.post("/v1/keys", json={"name": "bench", "public_pem": key.public_pem().decode()}).raise_for_status()
        ids = {}
        for version, path in (("1.0.0", v1), ("2.0.0", v2)):
            r = http.post("/v1/bundles", content=path.read_bytes(),
                          headers={"Content-Type": "application/octet-stream"})
            r.raise_for_status()
            ids[version] = r.json()["id"]
        enroll_token = http.post("/v1/enrollment-tokens", json={"group": "bench"}).json()["token"]
        agent_dir = work / "agent"
        subprocess.run([*AGENT_CLI, "enroll", "--server", server.url, "--token", enroll_token, "--data-dir",
                        str(agent_dir), "--name", "bench"], check=True, capture_output=True, timeout=60)
        device = json.loads((agent_dir / "credentials.json").read_text())
        port = free_port()
        config = write_config(work / "agent.toml", agent_dir, agent_dir / "trusted", port, extra=(
            "[telemetry]\ninterval_s = 0.5\n[updates]\npoll_interval_s = 5\nprobation_s = 1\nmin_requests = 5\n"))
        install(config, v1)
        with AgentProcess(config, port, work / "agent.log") as agent:
            deadline = time.monotonic() + 30
            while installed_version(http.get(f"/v1/devices/{device['device_id']}").json()["installed"]) != "1.0.0":
                if time.monotonic() > deadline:
                    raise SystemExit("the fleet never saw the agent's v1")
                time.sleep(0.2)
            stop = threading.Event()
            counts = {"ok": 0, "failed": 0, "v2": 0}
            lock = threading.Lock()

            def load() -> None:
                with httpx.Client(timeout=30) as c:
                    while not stop.is_set():
                        try:
                            r = c.post(f"{agent.url}/v1/models/m/infer", json={"inputs": [[0.1, 0.2, 0.3, 0.4]] * 2})
                            ok = r.status_code == 200
                            v2_answer = ok and r.json()["version"] == "2.0.0"
                        except httpx.TransportError:
                            ok, v2_answer = False, False
                        with lock:
                            counts["ok" if ok else "failed"] += 1
                            counts["v2"] += int(v2_answer)

            threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            ro = http.post("/v1/rollouts", json={"bundle": "m@2.0.0", "group": "bench", "waves": [100],
                                                 "observe_s": 0, "probation_s": 1, "max_latency_regression": 10})
            ro.raise_for_status()
            deadline = time.monotonic() + 120
            while http.get(f"/v1/rollouts/{ro.json()['id']}").json()["state"] != "completed":
                if time.monotonic() > deadline:
                    raise SystemExit(f"the update did not complete:\n{agent.log()[-3000:]}")
                time.sleep(0.2)
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(30)
        with sqlite3.connect(data / "fleet.db") as db:
            published = db.execute("select published_at from desired_documents where device_id = ?",
                                   (device["device_id"],)).fetchone()[0]
            committed = db.execute("select ts from device_events where device_id = ? and kind = 'update' and "
                                   "body like '%\"state\": \"committed\"%' and body like '%2.0.0%' order by ts limit 1",
                                   (device["device_id"],)).fetchone()[0]
        from datetime import datetime

        update_s = (datetime.fromisoformat(committed) - datetime.fromisoformat(published)).total_seconds()
        resume = measure_resume(server.url, server.port, device["api_token"], ids["2.0.0"], size, work)

    rows = [
        ("bundle size", f"{size / 1e6:.1f} MB", "~12 MB"),
        ("update time: desired published -> committed (probation 1 s)", f"{update_s:.2f} s", "-"),
        ("requests during the update (ok / answered by v2)", f"{counts['ok']} / {counts['v2']}", "-"),
        ("failed requests during the update", str(counts["failed"]), "0"),
        ("download cut at 50 %: attempts", str(resume["attempts"]), "2"),
        ("bytes on the wire for the bundle", f"{resume['wire_bytes']:,}", "-"),
        ("extra bytes (headers + the chunk in flight at the cut)",
         f"{resume['extra']:,} ({100 * resume['extra'] / size:.3f} %)", "<= 5 %"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>26}  goal")
    print("-" * (width + 36))
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>26}  {goal}")


if __name__ == "__main__":
    main()
