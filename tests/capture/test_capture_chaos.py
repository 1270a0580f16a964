"""Chaos: captured samples cross a fleet outage (its HTTP API and its embedded broker both gone), an agent
SIGKILLed while its samples wait on disk, the fleet's restart, and an agent SIGKILLed while it uploads
its backlog — and every sample arrives exactly once.

Each request carries a distinct input (``x = [i, i, i, i]``), so the exported dataset tells both a lost
sample (a value missing) and a duplicated one (a value twice, under another capture id)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeml.bundle import SigningKey
from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.store import sqlite_url
from tests.agent.agent_process import AgentProcess
from tests.capture.loop import Device, capture_bundle, enrolled_device, fleet_captures, prepare_fleet, wait_for
from tests.fleet.server_process import fleet_server
from tests.support.services import free_port

PER_PHASE = 15


def _serve(url: str, values: range) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in values:
            x = np.full((1, 4), float(i), np.float32)
            r = client.post("/v1/models/m/infer", json={"inputs": {"x": x.tolist()}})
            assert r.status_code == 200, r.text


class _Agents:
    """The agent processes this test started (each stopped at the end, whatever failed)."""

    def __init__(self) -> None:
        self.started: list[AgentProcess] = []

    def start(self, device: Device) -> AgentProcess:
        self.started.append(device.agent().__enter__())
        return self.started[-1]

    def stop(self) -> None:
        for agent in self.started:
            agent.stop()


def _kill(agent: AgentProcess) -> None:
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)


def _spooled(data: Path) -> int:
    return len(list((data / "capture" / "samples").glob("*.npz")))


@pytest.mark.slow
def test_no_captured_sample_is_lost_or_doubled_across_outage_restart_and_sigkill(tmp_path: Path,
                                                                                 signing_key: SigningKey) -> None:
    _, bundle = capture_bundle(tmp_path, signing_key)
    data = tmp_path / "fleet"
    data.mkdir()
    admin = create_first_admin(sqlite_url(data / "fleet.db"))
    port, broker_port = free_port(), free_port()
    total = 3 * PER_PHASE
    agents = _Agents()
    try:
        with fleet_server(data, port=port, broker_port=broker_port) as server:
            prepare_fleet(server.url, admin, signing_key, bundle)
            device = enrolled_device(tmp_path, server, admin, signing_key, bundle)
            device_data = device.config.parent / "device"
            agent = agents.start(device)
            _serve(agent.url, range(0, PER_PHASE))
            wait_for(lambda: len(fleet_captures(server.url, admin)) == PER_PHASE, 60, "phase 1 captures")
        # the fleet (API and broker) is down: the agent keeps capturing into its spool...
        _serve(agent.url, range(PER_PHASE, 2 * PER_PHASE))
        wait_for(lambda: _spooled(device_data) == PER_PHASE, 30, "phase 2 samples on the device's disk")
        _kill(agent)   # ...and dies with them unsent
        agent.wait(10)
        agent.stop()
        agent = agents.start(device)
        _serve(agent.url, range(2 * PER_PHASE, total))
        wait_for(lambda: _spooled(device_data) == 2 * PER_PHASE, 30, "phase 3 samples on the device's disk")
        with fleet_server(data, port=port, broker_port=broker_port) as server:
            wait_for(lambda: len(fleet_captures(server.url, admin)) > PER_PHASE, 60, "the backlog to start flowing")
            _kill(agent)   # killed in the middle of uploading its backlog
            agent.wait(10)
            agent.stop()
            agent = agents.start(device)
            wait_for(lambda: _spooled(device_data) == 0, 60, "the device's spool to empty")
            rows = fleet_captures(server.url, admin)
            values = []
            for row in rows:
                body = httpx.get(f"{server.url}/v1/captures/{row['device']}/{row['capture_id']}/file",
                                 headers={"Authorization": f"Bearer {admin}"}).content
                path = tmp_path / "got.npz"
                path.write_bytes(body)
                with np.load(path, allow_pickle=False) as npz:
                    values.append(int(npz["in/x"][0, 0]))
    finally:
        agents.stop()
    doubled = sorted(v for v in set(values) if values.count(v) > 1)
    assert sorted(values) == list(range(total)), f"lost: {sorted(set(range(total)) - set(values))}, doubled: {doubled}"
