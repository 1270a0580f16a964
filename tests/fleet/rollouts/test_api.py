"""The rollout API, the desired-state endpoint and what enrolment hands a device to trust — through the
real app (TestClient) with the server's own controller thread running."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edgeml.bundle import SigningKey
from edgeml.bundle.keys import TrustStore, load_public_key
from edgeml.desired import parse_desired
from edgeml_agent.enroll import write_trusted_keys
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("ro-bundles")
    key = SigningKey.generate()
    return {"key": key,
            "v1": make_bundle(d / "m-1.edgepkg", key, tiny_mlp(d / "a.onnx", seed=0), name="m", version="1.0.0"),
            "v2": make_bundle(d / "m-2.edgepkg", key, tiny_mlp(d / "b.onnx", seed=1), name="m", version="2.0.0")}


def _push(fleet: Any, path: Path) -> dict[str, Any]:
    r = fleet.call("POST", "/v1/bundles", content=path.read_bytes(),
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _wait_desired(fleet: Any, token: str, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = fleet.http.get("/v1/devices/me/desired", headers=fleet.auth(token))
        if r.status_code == 200:
            return bytes(r.content)
        assert r.status_code == 204
        time.sleep(0.2)
    raise AssertionError("the controller did not issue a desired state")


def test_enrolment_hands_out_the_keys_to_trust(sqlite_fleet: Any, bundles: dict[str, Any], tmp_path: Path) -> None:
    sqlite_fleet.trust(bundles["key"])
    answer = sqlite_fleet.enroll(group="cams")
    pems = [answer["desired_key_pem"], *answer["trusted_keys"]]
    assert load_public_key(answer["trusted_keys"][0].encode()) is not None and len(pems) == 2
    # the agent writes them as <key id>.pub into its trusted directory
    ids = write_trusted_keys(tmp_path / "trusted", pems)
    assert sorted(p.stem for p in (tmp_path / "trusted").glob("*.pub")) == sorted(ids)
    assert bundles["key"].key_id in ids
    # the same desired key on the next enrolment (kept in the database, not regenerated)
    assert sqlite_fleet.enroll()["desired_key_pem"] == answer["desired_key_pem"]


def test_rollout_lifecycle_over_the_api(sqlite_fleet: Any, bundles: dict[str, Any]) -> None:
    fleet = sqlite_fleet
    fleet.trust(bundles["key"])
    _push(fleet, bundles["v1"])
    v2 = _push(fleet, bundles["v2"])
    devices = [fleet.enroll(group="cams") for _ in range(3)]
    other = fleet.enroll(group="doors")
    # a device with nothing asked of it gets 204
    assert fleet.http.get("/v1/devices/me/desired", headers=fleet.auth(devices[0]["api_token"])).status_code == 204
    deployer = fleet.token("deployer")
    viewer = fleet.token("viewer")
    body = {"bundle": "m@2.0.0", "group": "cams", "waves": [50, 100], "observe_s": 600, "probation_s": 5}
    assert fleet.call("POST", "/v1/rollouts", viewer, json=body).status_code == 403
    r = fleet.call("POST", "/v1/rollouts", deployer, json=body)
    assert r.status_code == 201, r.text
    ro = r.json()
    assert (ro["bundle"], ro["bundle_id"], ro["state"], ro["devices"], ro["waves"], ro["counts"]) == (
        "m@2.0.0", v2["id"], "running", 3, 2, {"pending": 3})
    # a second rollout of the same model is refused while this one runs
    again = fleet.call("POST", "/v1/rollouts", deployer, json=body)
    assert again.status_code == 409 and ro["id"] in again.json()["detail"]
    assert fleet.call("POST", "/v1/rollouts", deployer, json={**body, "bundle": "m@9.9.9"}).status_code == 404
    assert fleet.call("POST", "/v1/rollouts", deployer, json={**body, "waves": [50, 20]}).status_code == 400
    # the first wave's device (enrolled first) gets a desired state signed with the fleet's key
    wire = _wait_desired(fleet, devices[0]["api_token"])
    trust = TrustStore([load_public_key(devices[0]["desired_key_pem"].encode())])
    doc = parse_desired(wire, trust, device_id=devices[0]["device_id"])
    assert (doc.models[0].version, doc.models[0].sha256, doc.rollout, doc.probation["seconds"]) == (
        "2.0.0", v2["id"], ro["id"], 5)
    assert fleet.http.get("/v1/devices/me/desired", headers=fleet.auth(other["api_token"])).status_code == 204
    # status: waves with counts, gates, the decisions so far
    status = fleet.call("GET", f"/v1/rollouts/{ro['id']}", viewer).json()
    assert [w["devices"] for w in status["wave_list"]] == [2, 1] and status["wave_list"][0]["state"] == "current"
    assert status["gates"]["max_error_rate"] == 0.05
    assert {d["action"] for d in status["decisions"]} >= {"rollout.create", "rollout.wave_started"}
    # a big rollout's status lists the first members only (by wave, then id) and says how many there are
    short = fleet.call("GET", f"/v1/rollouts/{ro['id']}", viewer, params={"devices": 1}).json()
    assert [m["device"] for m in short["device_list"]] == [min(devices[0]["device_id"], devices[1]["device_id"])]
    assert short["device_list_total"] == 3 and len(status["device_list"]) == 3
    running = fleet.call("GET", "/v1/rollouts", viewer, params={"state": "running"}).json()
    assert [x["id"] for x in running] == [ro["id"]]
    # pause / resume / abort, each once, each audited
    assert fleet.call("POST", f"/v1/rollouts/{ro['id']}/pause", deployer).json()["state"] == "paused"
    assert fleet.call("POST", f"/v1/rollouts/{ro['id']}/pause", deployer).status_code == 409
    assert fleet.call("POST", f"/v1/rollouts/{ro['id']}/resume", deployer).json()["state"] == "running"
    r = fleet.call("POST", f"/v1/rollouts/{ro['id']}/abort", deployer, json={"reason": "wrong model"})
    assert r.json()["state"] == "aborting"
    deadline = time.monotonic() + 10
    while fleet.call("GET", f"/v1/rollouts/{ro['id']}", viewer).json()["state"] != "aborted":
        assert time.monotonic() < deadline, "the controller did not finish the abort"
        time.sleep(0.2)
    assert fleet.call("POST", f"/v1/rollouts/{ro['id']}/abort", deployer, json={}).status_code == 409
    assert fleet.call("POST", "/v1/rollouts/ro-nope/pause", deployer).status_code == 404
    actions = [e["action"] for e in fleet.call("GET", "/v1/audit", params={"target": ro["id"]}).json()]
    assert {"rollout.create", "rollout.pause", "rollout.resume", "rollout.abort", "rollout.aborted"} <= set(actions)
