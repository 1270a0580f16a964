"""End to end: a fleet server process (embedded broker) and four real agent processes enrolled with
``edgeml-agent enroll``, telemetry on, real inference traffic from this test.

A good v2 rolls out wave by wave (25 %, 50 %, 100 % of 4 devices = 1, 2, 4) to every device. Then a v3
that passes verification and its smoke test (a batch of one) but fails on the batches live traffic
sends is stopped in its first wave: the agent's probation sees the errors and rolls back by itself,
the fleet sees that in its update events, pauses the rollout and sends the wave back to v2; the other
devices never get v3.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeml.bundle import SigningKey
from tests.agent.agent_process import AGENT_CLI, AgentProcess, install, write_config
from tests.fleet.rollouts.real_fleet import RealFleet, wait_for
from tests.fleet.server_process import ServerProcess
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import failing_on_batches

AGENTS = 4
AGENT_EXTRA = """
[telemetry]
interval_s = 0.5
heartbeat_s = 1
[updates]
poll_interval_s = 2
probation_s = 2
min_requests = 5
download_retry_s = 0.2
"""
BATCH = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 1.1, 1.2]]   # v3 fails on batches > 1


class Traffic:
    """Constant inference load on every agent; records, in order, what answered each request: the version,
    or ``error <status>`` for an error answer, or ``dropped`` when the connection failed."""

    def __init__(self, agents: list[AgentProcess]) -> None:
        self.agents = agents
        self.outcomes: dict[int, list[str]] = {a.port: [] for a in agents}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._load, args=(a,), daemon=True) for a in agents]

    def _load(self, agent: AgentProcess) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"{agent.url}/v1/models/m/infer", json={"inputs": BATCH})
                    outcome = str(r.json()["version"]) if r.status_code == 200 else f"error {r.status_code}"
                except httpx.TransportError:
                    outcome = "dropped"
                self.outcomes[agent.port].append(outcome)
                self._stop.wait(0.05)

    def history(self, agent: AgentProcess) -> list[str]:
        """The agent's outcomes with repeats collapsed: ``["1.0.0", "2.0.0"]`` for a clean upgrade."""
        return [k for k, _ in itertools.groupby(self.outcomes[agent.port])]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def installed(device: dict[str, Any]) -> str | None:
    """The version of m the fleet records for a device (``{"bundles": {m: v}}`` or ``{m: v}``)."""
    bundles = device["installed"].get("bundles")
    if isinstance(bundles, dict) and "m" in bundles:
        return str(bundles["m"])
    value = device["installed"].get("m")
    return str(value) if value is not None else None


def serving(agent: AgentProcess) -> str:
    r = httpx.post(f"{agent.url}/v1/models/m/infer", json={"inputs": BATCH[:1]}, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["version"])


# (server, admin token, agents, bundle files by version, device ids)
FleetAndAgents = tuple[ServerProcess, str, list[AgentProcess], dict[str, Path], list[str]]


@pytest.fixture
def fleet_and_agents(tmp_path: Path) -> Iterator[FleetAndAgents]:
    key = SigningKey.generate()
    src = tmp_path / "src"
    src.mkdir()
    bundles = {
        "1.0.0": make_bundle(tmp_path / "m-1.edgepkg", key, tiny_mlp(src / "v1.onnx", seed=0), version="1.0.0"),
        "2.0.0": make_bundle(tmp_path / "m-2.edgepkg", key, tiny_mlp(src / "v2.onnx", seed=1), version="2.0.0"),
        "3.0.0": make_bundle(tmp_path / "m-3.edgepkg", key, failing_on_batches(src / "v3.onnx"), version="3.0.0"),
    }
    with ExitStack() as stack:
        fleet = RealFleet(tmp_path, stack, key, bundles)   # the server, with the key trusted, the bundles pushed
        server, admin, http = fleet.server, fleet.admin, fleet.http
        agents, device_ids = [], []
        for i in range(AGENTS):
            agent_dir = tmp_path / f"agent{i}"
            token = http.post("/v1/enrollment-tokens", json={"group": "cams"}).json()["token"]
            out = subprocess.run([*AGENT_CLI, "enroll", "--server", server.url, "--token", token, "--data-dir",
                                  str(agent_dir), "--name", f"cam-{i}"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            creds = json.loads((agent_dir / "credentials.json").read_text())
            device_ids.append(creds["device_id"])
            # enrolment wrote the keys to trust, each in its role: the bundle key is a signer, never a fleet key
            assert (agent_dir / "trusted" / "bundles" / f"{key.key_id}.pub").exists()
            assert not (agent_dir / "trusted" / "fleet" / f"{key.key_id}.pub").exists()
            port = free_port()
            config = write_config(tmp_path / f"agent{i}.toml", agent_dir, agent_dir / "trusted", port,
                                  extra=AGENT_EXTRA)
            install(config, bundles["1.0.0"])
            agents.append(stack.enter_context(AgentProcess(config, port, tmp_path / f"agent{i}.log")))
        yield server, admin, agents, bundles, device_ids


def fleet_cli(server: ServerProcess, admin: str, *args: str, as_json: bool = True) -> Any:
    env = {**os.environ, "EDGEML_FLEET_URL": server.url, "EDGEML_FLEET_TOKEN": admin, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "edgeml.fleet.cli", *args, *(["--json"] if as_json else [])],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if as_json else out.stdout


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_good_version_rolls_out_in_waves_and_a_bad_one_is_stopped_in_its_first_wave(fleet_and_agents) -> None:
    server, admin, agents, _bundles, device_ids = fleet_and_agents
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30)

    def devices() -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in http.get("/v1/devices").json()}

    def status(rollout_id: str) -> dict[str, Any]:
        return dict(http.get(f"/v1/rollouts/{rollout_id}").json())

    def logs() -> str:
        return server.log.read_text()[-4000:] + "".join(a.log()[-2000:] for a in agents)

    # given four agents serving v1, whose telemetry told the fleet what they run
    assert [serving(a) for a in agents] == ["1.0.0"] * AGENTS
    wait_for("the fleet to see v1 on every device",
             lambda: all(installed(d) == "1.0.0" for d in devices().values()), 30, logs)

    with Traffic(agents) as traffic:
        # when a good v2 is rolled out in waves (through the CLI)
        ro = fleet_cli(server, admin, "rollout", "create", "m@2.0.0", "--select", "group=cams", "--waves", "25,50,100",
                       "--observe", "2s", "--wave-timeout", "60s", "--probation", "2s",
                       "--max-latency-regression", "5")
        assert (ro["devices"], ro["waves"]) == (AGENTS, 3)
        # then the waves advance one after the other, each after its gates passed, until every device runs v2
        done = wait_for("the v2 rollout to complete",
                        lambda: status(ro["id"])["state"] in ("completed", "paused", "aborted") and status(ro["id"]),
                        120, logs)
        assert done["state"] == "completed", json.dumps(done, indent=1, default=str)
        passed = [d for d in done["decisions"] if d["action"] == "rollout.wave_passed"]
        assert [p["details"]["wave"] for p in passed] == [1, 2, 3]
        assert all(p["details"]["figures"]["new"]["requests"] > 0 for p in passed)
        started = [d["details"]["devices"] for d in done["decisions"] if d["action"] == "rollout.wave_started"]
        assert [len(s) for s in started] == [1, 1, 2]
        assert sorted(d for wave in started for d in wave) == sorted(device_ids)
        assert [serving(a) for a in agents] == ["2.0.0"] * AGENTS
        cli_status = fleet_cli(server, admin, "rollout", "status", ro["id"])
        assert cli_status["counts"] == {"installed": AGENTS}
        table = fleet_cli(server, admin, "rollout", "status", ro["id"], as_json=False)
        assert "completed" in table and "rollout.wave_passed" in table and "max_error_rate" in table

        # when v3 (verifies, passes its smoke test, fails on live batches) is rolled out
        wait_for("the fleet to see v2 on every device",
                 lambda: all(installed(d) == "2.0.0" for d in devices().values()), 30, logs)
        r = http.post("/v1/rollouts", json={"bundle": "m@3.0.0", "group": "cams", "waves": [25, 100], "observe_s": 2,
                                            "wave_timeout_s": 60, "probation_s": 3, "max_latency_regression": 5})
        assert r.status_code == 201, r.text
        bad = r.json()["id"]
        # then the first wave's agent rolls back by itself, and the fleet pauses and sends the wave back
        stopped = wait_for("the v3 rollout to stop",
                           lambda: status(bad)["state"] != "running" and status(bad), 90, logs)
        assert stopped["state"] == "paused", json.dumps(stopped, indent=1, default=str)
        assert "rolled back by itself" in stopped["reason"]
        failed = next(d for d in stopped["decisions"] if d["action"] == "rollout.gate_failed")
        canary = stopped["device_list"][0]["device"]
        assert failed["details"]["reverted"] == [canary]
        assert {d["device"]: d["state"] for d in stopped["device_list"]} == {
            canary: "reverted", **{d: "pending" for d in device_ids if d != canary}}
        # every device serves v2: the canary returned to it by itself, the others never got v3
        assert [serving(a) for a in agents] == ["2.0.0"] * AGENTS
        time.sleep(3)  # the paused rollout sends nothing more
        assert [serving(a) for a in agents] == ["2.0.0"] * AGENTS
        assert status(bad)["state"] == "paused"
        canary_agent = agents[device_ids.index(canary)]
    # the canary served v2, then v3 took over and failed every live batch (500s, none dropped: the swaps
    # lose no request) until its probation rolled it back, then v2 answered again; v3 never answered
    assert traffic.history(canary_agent) == ["1.0.0", "2.0.0", "error 500", "2.0.0"], traffic.history(canary_agent)
    # the other devices went from v1 to v2 without one failed or dropped request, and never met v3
    assert all(traffic.history(a) == ["1.0.0", "2.0.0"] for a in agents if a is not canary_agent), \
        {a.port: traffic.history(a) for a in agents}
