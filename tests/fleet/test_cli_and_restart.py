"""The ``edgeml-fleet`` CLI against a real server process, the agent's enrolment, and a restart that
loses nothing (bundles, devices, tokens, audit) — on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from edgeml.bundle import SigningKey
from edgeml.fleet.cli import main as fleet_cli
from edgeml.fleet.client import config_path
from edgeml_agent.cli import main as agent_cli
from tests.fleet.mqtt_checks import check_refused, connect
from tests.fleet.server_process import fleet_server
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp


def fleet(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(fleet_cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, f"edgeml-fleet {' '.join(args)}: {result.output}"
        return result.stdout
    assert result.exit_code != 0, f"edgeml-fleet {' '.join(args)} should fail: {result.output}"
    return result.output


def fleet_json(*args: str):
    return json.loads(fleet(*args, "--json"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_cli_workflow_and_restart_loses_nothing(database: str, tmp_path: Path, request) -> None:
    db = None
    if database == "postgres":
        from tests.support.postgres import temporary_database

        ctx = temporary_database()
        db = ctx.__enter__()
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))
    data = tmp_path / "fleet"
    key = SigningKey.generate()
    (tmp_path / "ci.pub").write_bytes(key.public_pem())
    bundle = make_bundle(tmp_path / "det.edgepkg", key, tiny_mlp(tmp_path / "m.onnx"), name="det", version="1.0.0",
                         extra={"fidelity": {"cosine": 0.999}})

    # admin init prints the first admin token, once
    init_args = ["admin", "init", "--data-dir", str(data)] + (["--db", db] if db else [])
    admin = fleet(*init_args).strip()
    assert admin.startswith("efl_")
    assert "already exists" in fleet(*init_args, ok=False)

    port, broker_port = free_port(), free_port()
    with fleet_server(data, db=db, port=port, broker_port=broker_port) as server:
        # a wrong token is a clear error; the right one is saved 0600
        assert "refused the token" in fleet("login", server.url, "--token", "efl_wrong", ok=False)
        fleet("login", server.url, "--token", admin)
        assert mode(config_path()) == 0o600

        fleet("keys", "trust", str(tmp_path / "ci.pub"))
        assert "pushed det@1.0.0" in fleet("bundles", "push", str(bundle))
        listed = fleet_json("bundles", "list")
        assert [(b["name"], b["version"]) for b in listed] == [("det", "1.0.0")]
        assert fleet_json("bundles", "show", "det@1.0.0")["fidelity"] == {"cosine": 0.999}
        assert "det" in fleet("bundles", "list")  # the table form

        viewer = fleet("tokens", "create", "dash", "--role", "viewer").strip()
        assert {t["name"] for t in fleet_json("tokens", "list")} == {"admin", "dash"}

        # a device enrols with the agent command and keeps its credentials 0600
        enrol = fleet("enroll-token", "create", "--group", "lobby", "--tag", "cam").strip()
        agent_dir = tmp_path / "agent"
        result = CliRunner().invoke(agent_cli, ["enroll", "--server", server.url, "--token", enrol,
                                                "--data-dir", str(agent_dir), "--name", "cam-1"])
        assert result.exit_code == 0, result.output
        creds_file = agent_dir / "credentials.json"
        assert mode(creds_file) == 0o600
        creds = json.loads(creds_file.read_text())
        device_id = creds["device_id"]
        assert creds["mqtt"]["port"] == broker_port and creds["server"] == server.url
        again = CliRunner().invoke(agent_cli, ["enroll", "--server", server.url, "--token", enrol,
                                               "--data-dir", str(tmp_path / "agent2")])
        assert again.exit_code != 0 and "already used" in again.output

        devices = fleet_json("devices", "list")
        rows = [(d["id"], d["name"], d["group"], d["tags"]) for d in devices]
        assert rows == [(device_id, "cam-1", "lobby", ["cam"])]
        assert devices[0]["hardware"]["cpu_count"] >= 1  # the agent's host probe
        fleet("devices", "tag", device_id, "--add", "beta")
        assert fleet_json("devices", "show", device_id)["tags"] == ["beta", "cam"]
        peer, why = connect(broker_port, device_id, creds["mqtt"]["password"])
        assert peer is not None, why
        peer.close()

        out = tmp_path / "mosq"
        fleet("broker-config", "--out", str(out))
        assert mode(out / "passwords") == 0o600 and f"{device_id}:$7$" in (out / "passwords").read_text()
        assert "max_queued_messages" in (out / "mosquitto.conf").read_text()

        second = fleet("enroll-token", "create").strip()
        creds2 = httpx.post(f"{server.url}/v1/enroll", headers={"Authorization": f"Bearer {second}"},
                            json={"name": "cam-2"}).json()
        fleet("devices", "revoke", creds2["device_id"])
        audit_before = fleet_json("audit", "--limit", "1000")
        assert {"token.create", "key.trust", "bundle.upload", "device.enroll", "device.update",
                "device.revoke", "enrollment_token.create"} <= {e["action"] for e in audit_before}
        assert fleet_json("audit", "--action", "device.revoke")[0]["target"] == creds2["device_id"]

    # SIGTERM ran the graceful shutdown (broker quiesced, ingest written), not the default action
    assert server.process.returncode == 0, server.log.read_text()
    # the server is down: a clear error
    assert "cannot reach the fleet server" in fleet("bundles", "list", ok=False)

    # restart on the same data (and database): nothing is lost
    with fleet_server(data, db=db, port=port, broker_port=broker_port) as server:
        assert [b["version"] for b in fleet_json("bundles", "list")] == ["1.0.0"]
        got = httpx.get(f"{server.url}/v1/bundles/det@1.0.0/download",
                        headers={"Authorization": f"Bearer {creds['api_token']}"})
        assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(bundle.read_bytes()).hexdigest()
        assert [d["id"] for d in fleet_json("devices", "list")] == [device_id]
        revoked = fleet_json("devices", "list", "--include-revoked")
        assert {d["id"]: d["revoked"] for d in revoked} == {device_id: False, creds2["device_id"]: True}
        whoami = httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {viewer}"}).json()
        assert whoami["name"] == "dash"
        assert fleet_json("audit", "--limit", "1000") == audit_before
        # broker credentials survive too; the revoked device stays out
        peer, why = connect(broker_port, device_id, creds["mqtt"]["password"])
        assert peer is not None, why
        peer.close()
        check_refused(broker_port, creds2["device_id"], creds2["mqtt"]["password"])
