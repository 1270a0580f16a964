"""The capture loop's real parts for the end-to-end and chaos tests: a fleet server process, an enrolled
device with a capture-policy bundle installed, and its agent process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgeml.bundle import SigningKey
from edgeml_agent.store import Store
from tests.agent.agent_process import AgentProcess, write_config
from tests.fleet.server_process import ServerProcess
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp

RANDOM_ALWAYS = {"enabled": True, "keep": "both", "triggers": {"random": {"rate": 1.0}},
                 "budget": {"samples_per_hour": 100000}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Device:
    device_id: str
    api_token: str
    config: Path
    port: int
    log: Path

    def agent(self) -> AgentProcess:
        return AgentProcess(self.config, self.port, self.log)


def capture_bundle(tmp: Path, key: SigningKey, policy: dict[str, Any] = RANDOM_ALWAYS) -> tuple[Path, Path]:
    """(the ONNX model, a signed bundle of it whose manifest carries ``policy``)."""
    model = tiny_mlp(tmp / "m.onnx", batch=1)
    return model, make_bundle(tmp, key, model, name="m", version="1.0.0", extra={"capture": policy})


def prepare_fleet(url: str, admin: str, key: SigningKey, bundle: Path) -> None:
    r = httpx.post(f"{url}/v1/keys", headers=auth(admin), json={"name": "ci", "public_pem": key.public_pem().decode()})
    assert r.status_code == 201, r.text
    r = httpx.post(f"{url}/v1/bundles", headers=auth(admin), content=bundle.read_bytes(), timeout=30)
    assert r.status_code == 201, r.text


def enrolled_device(tmp: Path, server: ServerProcess, admin: str, key: SigningKey, bundle: Path,
                    *, telemetry: str = "interval_s = 0.5\nheartbeat_s = 2") -> Device:
    token = httpx.post(f"{server.url}/v1/enrollment-tokens", headers=auth(admin), json={}).json()["token"]
    r = httpx.post(f"{server.url}/v1/enroll", headers=auth(token), json={"name": "cam", "hardware": {},
                                                                         "installed": {}})
    assert r.status_code == 201, r.text
    creds = r.json()
    data = tmp / "device"
    (data / "trusted").mkdir(parents=True)
    (data / "trusted" / "builder.pub").write_bytes(key.public_pem())
    mqtt = {**creds["mqtt"], "host": "127.0.0.1", "port": server.broker_port}
    (data / "credentials.json").write_text(json.dumps({"server": server.url, "device_id": creds["device_id"],
                                                       "api_token": creds["api_token"], "mqtt": mqtt}))
    Store(data, {key.key_id: key.public_key}).install(bundle)
    port = free_port()
    config = write_config(tmp / "agent.toml", data, data / "trusted", port,
                          extra=f"[telemetry]\n{telemetry}\n[updates]\nenabled = false")
    return Device(creds["device_id"], creds["api_token"], config, port, tmp / "agent.log")


def infer(url: str, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(count):
            x = rng.normal(0.0, 1.0, (1, 4)).astype(np.float32)
            r = client.post("/v1/models/m/infer", json={"inputs": {"x": x.tolist()}})
            assert r.status_code == 200, r.text


def fleet_captures(url: str, admin: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/v1/captures", headers=auth(admin), params=query, timeout=10).json()
        rows += page["captures"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
