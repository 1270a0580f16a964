"""Every ``edgeml-fleet`` command that prints a table, against a real server, with its output captured as in a
CI log: each record is one line holding its full values, and ``--json`` carries the same records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from edgeml.bundle import SigningKey
from edgeml.fleet.cli import main as fleet_cli
from tests.fleet.server_process import fleet_server
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp
from tests.test_cli import in_order

LONG_NAME = "pedestrian-detector-yolov8n-for-the-lobby-cameras"


def fleet(*args: str) -> str:
    result = CliRunner().invoke(fleet_cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"edgeml-fleet {' '.join(args)}: {result.output}"
    return result.stdout




def one_line_with(text: str, values: list[str]) -> str:
    found = [line for line in text.splitlines() if in_order(line, values)]
    assert len(found) == 1, f"expected one line with {values}, got {found} in:\n{text}"
    return found[0]


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fleet server process with a trusted key, a bundle, a device in a group, a second token and a rollout;
    the CLI pointed at it. Yields the device's id."""
    monkeypatch.setenv("COLUMNS", "80")
    data = tmp_path / "fleet"
    admin = fleet("admin", "init", "--data-dir", str(data)).strip()
    key = SigningKey.generate()
    (tmp_path / "ci.pub").write_bytes(key.public_pem())
    bundle = make_bundle(tmp_path / "b.edgepkg", key, tiny_mlp(tmp_path / "m.onnx"), name=LONG_NAME,
                         version="2.1.0")
    with fleet_server(data) as server:
        monkeypatch.setenv("EDGEML_FLEET_URL", server.url)
        monkeypatch.setenv("EDGEML_FLEET_TOKEN", admin)
        fleet("keys", "trust", str(tmp_path / "ci.pub"), "--name", "release-builders")
        fleet("bundles", "push", str(bundle))
        fleet("tokens", "create", "grafana-dashboard-reader", "--role", "viewer")
        enrol = json.loads(fleet("enroll-token", "create", "--group", "lobby-east", "--tag", "cam", "--json"))
        device = httpx.post(f"{server.url}/v1/enroll", headers={"Authorization": f"Bearer {enrol['token']}"},
                            json={"name": "lobby-east-cam-01"}, timeout=30)
        assert device.status_code == 201, device.text
        fleet("rollout", "create", f"{LONG_NAME}@2.1.0", "--select", "group=lobby-east", "--waves", "50,100")
        yield device.json()["device_id"]


# (command, the keys of each JSON record whose values its table line must hold, in column order)
LISTS: list[tuple[list[str], list[str]]] = [
    (["tokens", "list"], ["id", "name", "role"]),
    (["keys", "list"], ["key_id", "name"]),
    (["bundles", "list"], ["name", "version", "target", "runtime", "precision", "size", "id"]),
    (["devices", "list"], ["id", "name", "group", "tags"]),
    (["audit"], ["actor", "action", "target"]),
    (["rollout", "list"], ["id", "bundle", "state", "wave", "waves", "devices"]),
]


def text_of(value: Any) -> str:
    """How a table shows a JSON value: lists comma-separated, a missing value as '-'."""
    if value is None:
        return "-"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


@pytest.mark.slow
def test_tables_keep_each_record_on_one_line_and_match_the_json(seeded: str) -> None:
    device_id = seeded
    for command, keys in LISTS:
        records = json.loads(fleet(*command, "--json"))
        assert records, f"{command}: nothing to show"
        text = fleet(*command)
        for record in records:
            one_line_with(text, [text_of(record[k]) for k in keys])
        assert "│" not in text, f"{command} drew a box table into a pipe"

    # the rollout's status: its summary row and one line per wave, as in its JSON
    (rollout,) = json.loads(fleet("rollout", "list", "--json"))
    status = json.loads(fleet("rollout", "status", rollout["id"], "--json"))
    text = fleet("rollout", "status", rollout["id"])
    one_line_with(text, [status["id"], f"{LONG_NAME}@2.1.0", status["state"]])
    for wave in status["wave_list"]:
        one_line_with(text, [text_of(wave[k]) for k in ("wave", "percent", "devices", "state")])

    # health and telemetry print their tables (no data yet) and parse as JSON
    assert isinstance(json.loads(fleet("health", "--json")), list)
    assert "fleet health, last 10 min" in fleet("health")
    assert set(json.loads(fleet("telemetry", device_id, "--json"))) >= {"windows", "drift", "events"}
    assert f"telemetry of {device_id} (newest first)" in fleet("telemetry", device_id)

    # a real pipe (`edgeml-fleet bundles list > file`) reads the same as the captured output
    out = subprocess.run([sys.executable, "-m", "edgeml.fleet.cli", "bundles", "list"], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    (bundle,) = json.loads(fleet("bundles", "list", "--json"))
    one_line_with(out.stdout, [bundle["name"], bundle["version"], bundle["id"]])
