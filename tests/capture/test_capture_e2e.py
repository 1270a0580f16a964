"""The whole loop with real processes: an agent serving a bundle whose policy captures every request
sends the samples to a real fleet server (bytes over HTTP, a notice over MQTT); they are listed by
trigger, exported with the CLI, and ``edgeml build --calibration <export>`` builds from them as they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from edgeml import cli as edgeml_cli
from edgeml.bundle import SigningKey
from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.cli import main as fleet_cli
from edgeml.fleet.store import sqlite_url
from tests.capture.loop import auth, capture_bundle, enrolled_device, fleet_captures, infer, prepare_fleet, wait_for
from tests.fleet.server_process import fleet_server

REQUESTS = 12


@pytest.mark.slow
def test_captured_requests_reach_the_fleet_and_export_into_a_build(tmp_path: Path, signing_key: SigningKey,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, bundle = capture_bundle(tmp_path, signing_key)
    data = tmp_path / "fleet"
    data.mkdir()
    admin = create_first_admin(sqlite_url(data / "fleet.db"))
    with fleet_server(data) as server:
        prepare_fleet(server.url, admin, signing_key, bundle)
        device = enrolled_device(tmp_path, server, admin, signing_key, bundle)
        with device.agent() as agent:
            infer(agent.url, REQUESTS)
            wait_for(lambda: len(fleet_captures(server.url, admin)) >= REQUESTS, 60, "the captures to arrive")

            def notices() -> list[dict]:
                doc = httpx.get(f"{server.url}/v1/telemetry/{device.device_id}", headers=auth(admin)).json()
                return [e for e in doc["events"] if e["kind"] == "capture"]

            wait_for(lambda: len(notices()) >= REQUESTS, 30, "the MQTT capture notices")
        rows = fleet_captures(server.url, admin, model="m", trigger="random")
        assert len(rows) == REQUESTS and {r["device"] for r in rows} == {device.device_id}
        assert all(r["tensors"]["in/x"] == {"dtype": "float32", "shape": [1, 4]} for r in rows)
        assert {n["body"]["capture_id"] for n in notices()} == {r["capture_id"] for r in rows}

        monkeypatch.setenv("EDGEML_FLEET_URL", server.url)
        monkeypatch.setenv("EDGEML_FLEET_TOKEN", admin)
        listed = CliRunner().invoke(fleet_cli, ["captures", "list", "--model", "m", "--trigger", "random",
                                                "--since", "1d", "--json"])
        assert listed.exit_code == 0, listed.output
        assert len(json.loads(listed.output)) == REQUESTS
        assert CliRunner().invoke(fleet_cli, ["captures", "list", "--trigger", "drift", "--json"]).output.strip() \
            == "[]"
        export = tmp_path / "dataset"
        exported = CliRunner().invoke(fleet_cli, ["captures", "export", "--model", "m", "-o", str(export)])
        assert exported.exit_code == 0, exported.output
    files = sorted(export.glob("*.npz"))
    assert len(files) == REQUESTS
    with np.load(files[0], allow_pickle=False) as npz:
        assert npz.files == ["x"] and npz["x"].shape == (1, 4)
    labels = (export / "labels.csv").read_text().splitlines()
    assert labels[0].endswith("predicted,label") and len(labels) == REQUESTS + 1

    os.environ.pop("EDGEML_FLEET_TOKEN", None)
    assert CliRunner().invoke(edgeml_cli.main, ["keys", "generate"]).exit_code == 0
    out = tmp_path / "v2.edgepkg"
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"enabled": True, "triggers": {"low_confidence": {"threshold": 0.6}}}))
    built = CliRunner().invoke(edgeml_cli.main, ["build", str(model), "-t", "x86-cpu", "-p", "fp32",
                                                 "-c", str(export), "--version", "2.0.0", "--bench-seconds", "0.05",
                                                 "--capture-policy", str(policy), "-o", str(out), "--json"])
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout)
    assert Path(report["bundle"]) == out and out.is_file()
    data = report["data"]   # the captured samples themselves, not random inputs, fed the build
    assert data["real_data"] and data["data_source"] == str(export)
    assert data["calibration_samples"] + data["evaluation_samples"] == REQUESTS
    manifest = json.loads(CliRunner().invoke(edgeml_cli.main, ["inspect", str(out), "--json"]).output)["manifest"]
    assert manifest["capture"] == json.loads(policy.read_text())   # v2 ships its own capture policy, signed
