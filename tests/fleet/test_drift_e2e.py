"""Drift end to end: real agents with the telemetry component send their input/output summaries over a
real broker (the fleet's embedded one); the fleet scores them against the bundle's reference.
An agent fed inputs from the calibration distribution shows low drift; one fed shifted inputs, high."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgeml.bundle import SigningKey
from edgeml.compiler.stats import reference_stats
from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.server import FleetServer, ServerConfig
from edgeml.fleet.store import sqlite_url
from edgeml.runtimes import open_model
from edgeml_agent.components import build_components
from edgeml_agent.config import parse_config
from edgeml_agent.daemon import Agent
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_shifted_live_inputs_show_high_drift_calibration_like_inputs_low(tmp_path: Path,
                                                                         signing_key: SigningKey) -> None:
    rng = np.random.default_rng(0)
    model = tiny_mlp(tmp_path / "m.onnx", seed=0)
    calib = rng.normal(0.0, 1.0, (512, 4)).astype(np.float32)
    with open_model(model, "onnxruntime") as backend:
        outputs = backend.run({"x": calib})
    stats = reference_stats({"x": calib}, outputs, samples=len(calib))
    bundle = make_bundle(tmp_path, signing_key, model, name="m", version="1.0.0", extra={"reference_stats": stats})

    db = sqlite_url(tmp_path / "fleet.db")
    admin = create_first_admin(db)
    server = FleetServer(ServerConfig(data_dir=tmp_path / "fleet", db=db, broker_port=free_port()))
    server.start()
    agents: list[Agent] = []
    try:
        with TestClient(server.app()) as http:
            r = http.post("/v1/keys", headers=_auth(admin),
                          json={"name": "ci", "public_pem": signing_key.public_pem().decode()})
            assert r.status_code == 201, r.text
            r = http.post("/v1/bundles", headers=_auth(admin), content=bundle.read_bytes())
            assert r.status_code == 201, r.text
            devices = []
            for name in ("calm", "shifted"):
                token = http.post("/v1/enrollment-tokens", headers=_auth(admin), json={}).json()["token"]
                enrolled = http.post("/v1/enroll", headers=_auth(token),
                                     json={"name": name, "hardware": {}, "installed": {}})
                assert enrolled.status_code == 201, enrolled.text
                devices.append(enrolled.json())
        for device in devices:
            data = tmp_path / device["device_id"]
            data.mkdir()
            (data / "credentials.json").write_text(json.dumps({"server": "http://127.0.0.1:1", **{
                k: device[k] for k in ("device_id", "api_token", "mqtt")}}))
            (data / "trusted").mkdir()
            (data / "trusted" / "builder.pub").write_bytes(signing_key.public_pem())
            config = parse_config({"data_dir": str(data), "server": {"port": 0},
                                   "telemetry": {"interval_s": 0.3, "heartbeat_s": 5, "stats_budget": 1.0},
                                   "updates": {"enabled": False}})
            agent = Agent(config, components=build_components)
            agent.store.install(bundle)
            agent.start()
            agents.append(agent)
        for agent, shift in zip(agents, (0.0, 2.5), strict=True):
            assert agent.server is not None
            with httpx.Client(base_url=f"http://127.0.0.1:{agent.server.port}", timeout=10) as client:
                for _ in range(60):
                    x = rng.normal(shift, 1.0, (4, 4)).astype(np.float32)
                    assert client.post("/v1/models/m/infer", json={"inputs": {"x": x.tolist()}}).status_code == 200
        deadline = time.monotonic() + 30
        scores: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            with TestClient(server.app()) as http:
                for d in devices:
                    doc = http.get(f"/v1/telemetry/{d['device_id']}", headers=_auth(admin)).json()
                    drift = [x for x in doc["drift"] if x["model"] == "m"]
                    scores[d["device_id"]] = drift[0]["score"] if drift else None
                    requests = sum(w["requests"] for w in doc["windows"])
                    scores[d["device_id"] + ":requests"] = requests
            if all(scores.get(d["device_id"] + ":requests") == 60 for d in devices):
                break
            time.sleep(0.3)
        calm, shifted = (scores[d["device_id"]] for d in devices)
        assert calm is not None and shifted is not None, scores
        assert calm < 0.1, scores
        assert shifted > 0.25, scores
    finally:
        for agent in agents:
            agent.stop()
        server.stop()
