"""A real fleet for rollout tests: an ``edgeml-fleet serve`` process (embedded broker), real
``edgeml-agent`` daemons enrolled with ``edgeml-agent enroll``, and live inference traffic.

One fleet and its agents are meant to be shared by the tests of a module (module-scoped fixture): each
test rolls out its own model name, so rollouts of different tests never block or touch each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgeml.bundle import SigningKey
from edgeml.bundle.keys import TrustStore
from edgeml.fleet.bootstrap import create_first_admin
from edgeml_agent.store import Store
from tests.agent.agent_process import AGENT_CLI, AgentProcess, write_config
from tests.fleet.server_process import ServerProcess, fleet_server
from tests.support.services import free_port

# Short everything: telemetry every 0.5 s with full input statistics (drift), a 1 s probation that
# judges on the smoke test alone when it sees fewer than 5 requests (the tests keep traffic off
# during probation, so what fails a rollout is the FLEET's gate, not the agent's own).
AGENT_EXTRA = """
[telemetry]
interval_s = 0.5
heartbeat_s = 1
stats_budget = 1.0
[updates]
poll_interval_s = 2
probation_s = 1
min_requests = 5
download_retry_s = 0.2
"""
ONE_ROW = [[0.1, 0.2, 0.3, 0.4]]
THREE_ROWS = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 1.1, 1.2]]
FINAL = ("completed", "paused", "aborted")


def wait_for(what: str, condition: Callable[[], Any], timeout: float, log: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{log()}")


@dataclass
class Device:
    name: str
    device_id: str
    agent: AgentProcess

    def infer(self, model: str, inputs: Any = ONE_ROW) -> httpx.Response:
        return httpx.post(f"{self.agent.url}/v1/models/{model}/infer", json={"inputs": inputs}, timeout=30)

    def answering(self, model: str, inputs: Any = ONE_ROW) -> str | None:
        """The version that answers successfully right now, None while the request fails."""
        r = self.infer(model, inputs)
        return str(r.json()["version"]) if r.status_code == 200 else None

    def serving(self, model: str, inputs: Any = ONE_ROW) -> str:
        """The version that answers a request right now (the agent's own word, not the fleet's)."""
        r = self.infer(model, inputs)
        assert r.status_code == 200, r.text
        return str(r.json()["version"])


class Load:
    """Constant inference traffic on one device's model; counts answers per version and failures.
    ``inputs`` is one request's inputs, or a function drawing new ones for each request."""

    def __init__(self, device: Device, model: str, inputs: Any = ONE_ROW, pause_s: float = 0.03) -> None:
        self.device, self.model, self.inputs, self.pause_s = device, model, inputs, pause_s
        self.answers: Counter[str] = Counter()
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url = f"{self.device.agent.url}/v1/models/{self.model}/infer"
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    inputs = self.inputs() if callable(self.inputs) else self.inputs
                    r = client.post(url, json={"inputs": inputs})
                    if r.status_code == 200:
                        self.answers[r.json()["version"]] += 1
                    else:
                        self.failures += 1
                except httpx.TransportError:
                    self.failures += 1
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class RealFleet:
    def __init__(self, tmp: Path, stack: ExitStack, key: SigningKey, bundles: Mapping[str, Path]) -> None:
        self.tmp, self.stack, self.key = tmp, stack, key
        data = tmp / "fleet"
        data.mkdir()
        self.admin = create_first_admin(f"sqlite:///{data / 'fleet.db'}")
        self.server: ServerProcess = stack.enter_context(fleet_server(data))
        self.http = stack.enter_context(httpx.Client(base_url=self.server.url, timeout=30,
                                                     headers={"Authorization": f"Bearer {self.admin}"}))
        r = self.http.post("/v1/keys", json={"name": "ci", "public_pem": key.public_pem().decode()})
        assert r.status_code == 201, r.text
        for path in bundles.values():
            r = self.http.post("/v1/bundles", content=path.read_bytes(),
                               headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        self.devices: list[Device] = []

    # -- devices -------------------------------------------------------------------------------------
    def enroll(self, name: str, group: str, installed: list[Path], extra: str = AGENT_EXTRA) -> Device:
        """Enrol a new device with the real CLI, install ``installed`` locally, start its daemon
        (``extra``: its config beyond the data directory and port)."""
        agent_dir = self.tmp / name
        token = self.http.post("/v1/enrollment-tokens", json={"group": group}).json()["token"]
        out = subprocess.run([*AGENT_CLI, "enroll", "--server", self.server.url, "--token", token, "--data-dir",
                              str(agent_dir), "--name", name], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        device_id = json.loads((agent_dir / "credentials.json").read_text())["device_id"]
        port = free_port()
        config = write_config(self.tmp / f"{name}.toml", agent_dir, agent_dir / "trusted", port, extra=extra)
        store = Store(agent_dir, TrustStore([self.key.public_key]))
        for bundle in installed:   # in this process: an `edgeml-agent install` subprocess per bundle costs ~2 s
            store.install(bundle)
        agent = self.stack.enter_context(AgentProcess(config, port, self.tmp / f"{name}.log"))
        device = Device(name, device_id, agent)
        self.devices.append(device)
        return device

    def installed(self, device: Device, model: str) -> str | None:
        """The version of ``model`` the fleet records for a device (from its telemetry)."""
        row = self.http.get(f"/v1/devices/{device.device_id}").json()["installed"]
        bundles = row.get("bundles") if isinstance(row.get("bundles"), dict) else row
        value = bundles.get(model)
        return str(value) if value is not None else None

    def wait_installed(self, devices: list[Device], model: str, version: str, timeout: float = 30) -> None:
        wait_for(f"the fleet to see {model}@{version} on {[d.name for d in devices]}",
                 lambda: all(self.installed(d, model) == version for d in devices), timeout, self.logs)

    def events(self, device: Device) -> list[dict[str, Any]]:
        """The device's events as the fleet stored them (newest first)."""
        return list(self.http.get(f"/v1/telemetry/{device.device_id}").json()["events"])

    # -- rollouts ------------------------------------------------------------------------------------
    def rollout(self, bundle: str, **body: Any) -> str:
        defaults = {"group": "cams", "observe_s": 3, "wave_timeout_s": 60, "probation_s": 1,
                    "max_latency_regression": 50, "min_requests": 5}
        r = self.http.post("/v1/rollouts", json={"bundle": bundle, **defaults, **body})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def complete(self, bundle: str, **body: Any) -> dict[str, Any]:
        """Roll ``bundle`` out with light traffic on its model on every device (a wave is judged only on
        telemetry of the new version, and agents send none for a model nobody uses) and wait until the
        rollout stops; its final status."""
        model = bundle.partition("@")[0]
        with ExitStack() as traffic:
            for device in self.devices:
                traffic.enter_context(Load(device, model, pause_s=0.1))
            return self.wait_stopped(self.rollout(bundle, **body))

    def status(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/rollouts/{rollout_id}").json())

    def member(self, rollout_id: str, device: Device) -> dict[str, Any]:
        """The device's part in the rollout; state None until the controller has given the rollout its members
        (it does that in its own thread, just after the API recorded the rollout)."""
        return next((m for m in self.status(rollout_id)["device_list"] if m["device"] == device.device_id),
                    {"device": device.device_id, "state": None})

    def wait_member(self, rollout_id: str, device: Device, state: str, timeout: float = 45) -> None:
        wait_for(f"{device.name} to be {state} in {rollout_id}",
                 lambda: self.member(rollout_id, device)["state"] == state, timeout, self.logs)

    def wait_stopped(self, rollout_id: str, timeout: float = 90) -> dict[str, Any]:
        """The rollout's status once it left ``running``."""
        return dict(wait_for(f"rollout {rollout_id} to stop running",
                             lambda: (s := self.status(rollout_id))["state"] in FINAL and s, timeout, self.logs))

    def decisions(self, rollout_id: str, action: str) -> list[dict[str, Any]]:
        return [d["details"] for d in self.status(rollout_id)["decisions"] if d["action"] == action]

    def cli(self, *args: str) -> Any:
        """The real ``edgeml-fleet`` CLI against this server, JSON output."""
        env = {**os.environ, "EDGEML_FLEET_URL": self.server.url, "EDGEML_FLEET_TOKEN": self.admin}
        out = subprocess.run([sys.executable, "-m", "edgeml.fleet.cli", *args, "--json"], capture_output=True,
                             text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def logs(self) -> str:
        return self.server.log.read_text()[-4000:] + "".join(
            f"\n--- {d.name}\n{d.agent.log_path.read_text(errors='replace')[-2500:]}" for d in self.devices)


@contextmanager
def real_fleet(tmp: Path, key: SigningKey, bundles: Mapping[str, Path], agents: int,
               installed: list[Path], extra: str = AGENT_EXTRA) -> Iterator[RealFleet]:
    """A fleet with ``agents`` devices in group ``cams`` (cam-0, cam-1, … in enrolment order), each
    running the ``installed`` bundles."""
    with ExitStack() as stack:
        fleet = RealFleet(tmp, stack, key, bundles)
        for i in range(agents):
            fleet.enroll(f"cam-{i}", "cams", installed, extra)
        yield fleet
