"""Key roles with a real fleet server, a real enrolled ``edgeml-agent`` daemon and the embedded broker:
a desired state signed by a builder key is refused, a bundle signed by the fleet key is refused, the
fleet key rotates without re-enrolling, a revoked builder key stops working fleet-wide, and
``edgeml-agent install`` of a tampered archive of an installed version is refused. In every case the
device keeps serving what it served.

The attacker here holds a key (a builder's, or a stolen fleet key) and can publish on the device's
``desired`` topic (a compromised broker: the test publishes with the fleet's service account).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeml.bundle import SigningKey, TrustStore, sha256_file
from edgeml.bundle.archive import open_tar_stream
from edgeml.desired import sign_desired
from edgeml.fleet.broker import service_credentials
from edgeml.fleet.rollouts.desired_docs import fleet_signing_key
from edgeml.fleet.store import Store
from edgeml.protocol import desired_topic
from edgeml_agent.store import Store as AgentStore
from tests.agent.agent_process import AGENT_CLI
from tests.fleet.mqtt_checks import connect
from tests.fleet.rollouts.real_fleet import Device, RealFleet, real_fleet, wait_for
from tests.support.bundle_server import BundleServer
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODELS = ("bk", "fk", "rot", "rev", "mig")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("keyroles")
    key = SigningKey.generate()
    v1, v2 = tiny_mlp(tmp / "v1.onnx", seed=0), tiny_mlp(tmp / "v2.onnx", seed=1)
    out = tmp / "bundles"
    out.mkdir()
    found = {f"{m}@1": make_bundle(out, key, v1, name=m, version="1.0.0") for m in MODELS}
    found |= {f"{m}@2": make_bundle(out, key, v2, name=m, version="2.0.0") for m in ("bk", "rot", "mig")}
    return tmp, key, found


@pytest.fixture(scope="module")
def fleet(built: tuple[Path, SigningKey, dict[str, Path]]) -> Iterator[RealFleet]:
    tmp, key, found = built
    with real_fleet(tmp, key, found, agents=1, installed=[found[f"{m}@1"] for m in MODELS]) as fleet:
        fleet.wait_installed(fleet.devices, "rev", "1.0.0")
        yield fleet


def _db(fleet: RealFleet) -> Store:
    return Store.open(f"sqlite:///{fleet.tmp / 'fleet' / 'fleet.db'}", migrate=False)


def _publish(fleet: RealFleet, device: Device, wire: bytes) -> None:
    """What a compromised broker (or anyone holding the fleet's service account) can do."""
    service = service_credentials(_db(fleet))
    peer, why = connect(fleet.server.broker_port, service.username, service.password)
    assert peer is not None, why
    try:
        peer.publish(desired_topic(device.device_id), wire, retain=True)
    finally:
        peer.close()


def _desired(key: SigningKey, device: Device, model: str, version: str, bundle: Path, url: str, *,
             serial: int | None = None, rollback: bool = False) -> bytes:
    now = time.time()
    return sign_desired({"device": device.device_id, "issued": now, "expires": now + 600,
                         "serial": int(now * 1000) if serial is None else serial,
                         "models": [{"name": model, "version": version, "sha256": sha256_file(bundle),
                                     "size": bundle.stat().st_size, "url": url, "rollback": rollback}],
                         "probation": {"seconds": 1.0}, "rollout": None}, key)


def _events(fleet: RealFleet, device: Device, kind: str, needle: str) -> list[dict[str, Any]]:
    return [e["body"] for e in fleet.events(device) if e["kind"] == kind and needle in str(e["body"])]


def _refused_update(fleet: RealFleet, device: Device, model: str, version: str) -> dict[str, Any]:
    """The device's report that it refused ``model@version`` (its update machine reached ``failed``)."""
    def failed() -> list[dict[str, Any]]:
        return [b for b in _events(fleet, device, "update", model) if b.get("model") == model
                and b.get("version") == version and b.get("state") == "failed"]
    return dict(wait_for(f"{device.name} to refuse {model}@{version}", failed, 40, fleet.logs)[0])


def test_a_desired_state_signed_by_a_builder_key_is_refused(fleet: RealFleet, built: Any) -> None:
    _, key, found = built
    cam = fleet.devices[0]
    bundle_id = sha256_file(found["bk@2"])
    # given a builder key (trusted to sign bundles) signing a desired state with a huge serial
    wire = _desired(key, cam, "bk", "2.0.0", found["bk@2"], f"/v1/bundles/{bundle_id}/download", serial=10**15)
    _publish(fleet, cam, wire)
    # then the device refuses it as not signed by its fleet key, and keeps serving 1.0.0
    refused = wait_for("desired_refused", lambda: _events(fleet, cam, "desired_refused", key.key_id), 30, fleet.logs)
    assert "does not trust as its fleet key" in refused[0]["reason"], refused
    assert cam.serving("bk") == "1.0.0"
    # and the huge serial was not taken: the real fleet still moves the device
    fleet.complete("bk@2.0.0")
    assert cam.serving("bk") == "2.0.0"


def test_a_bundle_signed_by_the_fleet_key_is_refused(fleet: RealFleet, built: Any, tmp_path: Path) -> None:
    tmp = built[0]
    cam = fleet.devices[0]
    fleet_key = fleet_signing_key(_db(fleet))   # the attacker stole it (the fleet refuses such uploads)
    bundle = make_bundle(tmp_path, fleet_key, tiny_mlp(tmp / "v1.onnx"), name="fk", version="2.5.0")
    with BundleServer(tmp_path) as mirror:
        _publish(fleet, cam, _desired(fleet_key, cam, "fk", "2.5.0", bundle, mirror.url(bundle.name)))
        refused = _refused_update(fleet, cam, "fk", "2.5.0")
    assert refused["source"] == "verifying" and "not trusted" in refused["reason"], refused
    assert cam.serving("fk") == "1.0.0"


def test_a_revoked_builder_key_stops_working_on_the_device(fleet: RealFleet, built: Any, tmp_path: Path) -> None:
    tmp = built[0]
    cam = fleet.devices[0]
    leaked = SigningKey.generate()
    r = fleet.http.post("/v1/keys", json={"name": "leaky", "public_pem": leaked.public_pem().decode()})
    assert r.status_code == 201, r.text
    v2, v3 = (make_bundle(tmp_path, leaked, tiny_mlp(tmp / "v2.onnx"), name="rev", version=v)
              for v in ("2.0.0", "3.0.0"))
    for bundle in (v2, v3):
        r = fleet.http.post("/v1/bundles", content=bundle.read_bytes(),
                            headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    # given the device runs rev@2.0.0, signed by a builder key that then leaks
    assert fleet.complete("rev@2.0.0")["state"] == "completed"
    assert cam.serving("rev") == "2.0.0"
    # when the admin revokes the key with the real CLI
    assert fleet.cli("keys", "revoke", leaked.key_id)["status"] == "revoked"
    listed = {k["key_id"]: k for k in fleet.cli("keys", "list")}
    assert (listed[leaked.key_id]["role"], listed[leaked.key_id]["status"]) == ("bundle-signer", "revoked")
    # then the device drops it with the desired state the revocation re-signed
    revoked = fleet.tmp / cam.name / "trusted" / "revoked.json"
    wait_for("the device to record the revocation", lambda: revoked.exists() and leaked.key_id in revoked.read_text(),
             30, fleet.logs)
    assert not (fleet.tmp / cam.name / "trusted" / "bundles" / f"{leaked.key_id}.pub").exists()
    # and the fleet refuses to trust it again, or to roll out another bundle it signed
    r = fleet.http.post("/v1/keys", json={"name": "leaky", "public_pem": leaked.public_pem().decode()})
    assert r.status_code == 409, r.text
    r = fleet.http.post("/v1/rollouts", json={"bundle": "rev@3.0.0", "group": "cams"})
    assert r.status_code == 409 and "revoked" in r.json()["detail"], r.text
    # and at its next load the device refuses the installed version the key signed (TUF: no grace)
    cam.agent.stop()
    cam.agent.__enter__()
    models = httpx.get(f"{cam.agent.url}/v1/models", timeout=10).json()
    failed = {m["name"]: m["error"] for m in models["failed"]}
    assert "not trusted" in failed.get("rev", ""), models
    assert cam.answering("rev") is None and cam.serving("bk") is not None   # the other models keep serving


def test_the_fleet_key_rotates_without_re_enrolling(fleet: RealFleet, built: Any) -> None:
    v1 = built[2]["rot@1"]
    cam = fleet.devices[0]
    old = fleet_signing_key(_db(fleet))
    # when the admin rotates the fleet key
    rotated = fleet.cli("keys", "rotate-fleet")
    assert rotated["previous_key_id"] == old.key_id and rotated["key_id"] != old.key_id
    roles = {(k["key_id"], k["role"], k["status"]) for k in fleet.cli("keys", "list")}
    assert {(old.key_id, "fleet", "retired"), (rotated["key_id"], "fleet", "active")} <= roles
    # then the device follows a rollout signed by the new key
    stopped = fleet.complete("rot@2.0.0")
    assert stopped["state"] == "completed", stopped
    assert cam.serving("rot") == "2.0.0"
    agent_dir = fleet.tmp / cam.name
    assert sorted(p.stem for p in (agent_dir / "trusted" / "fleet").glob("*.pub")) == [rotated["key_id"]]
    # and refuses the old key from then on
    _publish(fleet, cam, _desired(old, cam, "rot", "1.0.0", v1, "/v1/bundles/x/download", rollback=True))
    refused = wait_for("desired_refused", lambda: _events(fleet, cam, "desired_refused", old.key_id), 30, fleet.logs)
    assert "does not trust as its fleet key" in refused[0]["reason"]
    assert cam.serving("rot") == "2.0.0"


def _tampered(bundle: Path, out: Path) -> Path:
    """The same signed manifest and signature, one byte of the model changed (a plain tar)."""
    with open_tar_stream(bundle) as src, tarfile.open(out, "w") as dst:
        while (member := src.next()) is not None:
            reader = src.extractfile(member)
            data = reader.read() if reader is not None else b""
            if member.name.endswith(".onnx"):
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            info = tarfile.TarInfo(member.name)
            info.type, info.size = (tarfile.DIRTYPE, 0) if member.isdir() else (tarfile.REGTYPE, len(data))
            dst.addfile(info, None if member.isdir() else io.BytesIO(data))
    return out


def test_install_of_a_tampered_archive_of_an_installed_version_is_refused(fleet: RealFleet, built: Any,
                                                                          tmp_path: Path) -> None:
    _, _, found = built
    cam = fleet.devices[0]
    tampered = _tampered(found["fk@1"], tmp_path / "fk-1.0.0.edgepkg")
    out = subprocess.run([*AGENT_CLI, "install", str(tampered), "--config", str(fleet.tmp / f"{cam.name}.toml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout
    assert "installed" not in out.stdout and "does not match its sha256" in out.stderr, (out.stdout, out.stderr)
    # and the installed copy is untouched and keeps serving
    assert AgentStore(fleet.tmp / cam.name, TrustStore([built[1].public_key])).open("fk").manifest.version == "1.0.0"
    assert cam.serving("fk") == "1.0.0"


def test_an_agent_upgraded_from_one_trusted_directory_splits_it_by_role(fleet: RealFleet) -> None:
    cam = fleet.devices[0]
    trusted = fleet.tmp / cam.name / "trusted"
    # given the layout older agents wrote: the fleet key and the bundle keys side by side in trusted/
    cam.agent.stop()
    for path in [*trusted.glob("fleet/*.pub"), *trusted.glob("bundles/*.pub")]:
        path.rename(trusted / path.name)
    (trusted / "revoked.json").unlink(missing_ok=True)
    fleet_id = fleet_signing_key(_db(fleet)).key_id
    # when the upgraded agent starts, it asks its fleet which of the keys it holds is the fleet key
    cam.agent.__enter__()
    assert not list(trusted.glob("*.pub"))
    assert [p.stem for p in trusted.glob("fleet/*.pub")] == [fleet_id]
    assert fleet_id not in [p.stem for p in trusted.glob("bundles/*.pub")]
    # and it still follows the fleet
    assert fleet.complete("mig@2.0.0")["state"] == "completed"
    assert cam.serving("mig") == "2.0.0"
