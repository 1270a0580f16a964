"""Bundles in the registry: signature-checked upload, dedup, list/show, ranged download, guarded delete."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey
from edgeml.fleet.store.models import Rollout
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

FIDELITY = {"top1_agreement": 0.99, "cosine": 0.999}
BENCHMARK = {"host": "ci", "latency_ms": {"p50": 1.2, "p90": 1.5, "p99": 2.0}}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict:
    """Two versions signed by a trusted key, one signed by a stranger, one unsigned-looking file."""
    d = tmp_path_factory.mktemp("bundles")
    key, stranger = SigningKey.generate(), SigningKey.generate()
    model = tiny_mlp(d / "mlp.onnx")
    extra = {"fidelity": FIDELITY, "benchmark": BENCHMARK}
    return {
        "key": key,
        "v1": make_bundle(d / "det-1.edgepkg", key, model, name="det", version="1.0.0", extra=extra),
        "v2": make_bundle(d / "det-2.edgepkg", key, model, name="det", version="2.0.0"),
        "v1_again": make_bundle(d / "det-1b.edgepkg", key, model, name="det", version="1.0.0",
                                extra={"fidelity": {"top1_agreement": 0.5}}),
        "untrusted": make_bundle(d / "evil.edgepkg", stranger, model, name="det", version="9.0.0"),
    }


def push(fleet, path: Path, token: str | None = None):
    return fleet.call("POST", "/v1/bundles", token, content=path.read_bytes(),
                      headers={"Content-Type": "application/octet-stream"})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_list_show_and_dedup(fleet, bundles) -> None:
    # given a fleet that trusts the build key
    fleet.trust(bundles["key"])
    deployer = fleet.token("deployer")
    # when a deployer pushes a bundle
    r = push(fleet, bundles["v1"], deployer)
    # then it is stored under its sha256 with the manifest's facts
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["id"] == sha(bundles["v1"])
    assert (out["name"], out["version"], out["runtime"], out["uploaded_by"]) == ("det", "1.0.0", "onnxruntime",
                                                                                 "deployer-user")
    assert out["size"] == bundles["v1"].stat().st_size
    # pushing the same bytes again stores nothing new
    again = push(fleet, bundles["v1"], deployer)
    assert again.status_code == 200 and again.json()["id"] == out["id"]
    stored = [p for p in fleet.server.context.artifacts.root.rglob("*") if p.is_file()]
    # one copy of the bytes, plus what is derived from them once (the tar stream's digest)
    assert sorted(p.name for p in stored) == [out["id"], f"{out['id']}.tar.json"]
    # list and show
    assert push(fleet, bundles["v2"]).status_code == 201
    listed = fleet.call("GET", "/v1/bundles", fleet.token("viewer")).json()
    assert [(b["name"], b["version"]) for b in listed] == [("det", "1.0.0"), ("det", "2.0.0")]
    assert len(fleet.call("GET", "/v1/bundles", params={"name": "other"}).json()) == 0
    shown = fleet.call("GET", "/v1/bundles/det@1.0.0").json()
    assert shown["id"] == out["id"]
    assert shown["fidelity"] == FIDELITY and shown["benchmark"] == BENCHMARK
    assert shown["manifest"]["inputs"][0]["name"] and shown["in_use_by_rollouts"] == []
    assert fleet.call("GET", f"/v1/bundles/{out['id']}").json()["version"] == "1.0.0"
    assert fleet.call("GET", "/v1/bundles/det@7.0.0").status_code == 404


def test_same_version_with_other_content_is_a_conflict(fleet, bundles) -> None:
    fleet.trust(bundles["key"])
    assert push(fleet, bundles["v1"]).status_code == 201
    r = push(fleet, bundles["v1_again"])
    assert r.status_code == 409 and "bump the version" in r.json()["detail"]


def test_untrusted_unsigned_and_garbage_uploads_are_refused(fleet, bundles, tmp_path) -> None:
    fleet.trust(bundles["key"])
    r = push(fleet, bundles["untrusted"])
    assert r.status_code == 400 and "refused" in r.json()["detail"]
    tampered = tmp_path / "t.edgepkg"
    data = bytearray(bundles["v1"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    assert push(fleet, tampered).status_code == 400
    garbage = tmp_path / "g.edgepkg"
    garbage.write_bytes(b"not a bundle")
    assert push(fleet, garbage).status_code == 400
    assert fleet.call("POST", "/v1/bundles", content=b"").status_code == 400
    # nothing was kept from the refused uploads
    assert fleet.call("GET", "/v1/bundles").json() == []
    assert [p for p in fleet.server.context.artifacts.root.rglob("*") if p.is_file()] == []


def test_a_fleet_that_trusts_no_key_refuses_everything(sqlite_fleet, bundles) -> None:
    r = push(sqlite_fleet, bundles["v1"])
    assert r.status_code == 400 and "refused" in r.json()["detail"]


def test_ranged_download_resumes(sqlite_fleet, bundles) -> None:
    fleet = sqlite_fleet
    fleet.trust(bundles["key"])
    bid = push(fleet, bundles["v1"]).json()["id"]
    data = bundles["v1"].read_bytes()
    device = fleet.enroll()
    url = f"/v1/bundles/{bid}/download"
    # a device downloads the whole file
    full = fleet.call("GET", url, device["api_token"])
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    etag = full.headers["etag"]
    # an interrupted download resumes from where it stopped
    half = len(data) // 2
    first = fleet.call("GET", url, headers={"Range": f"bytes=0-{half - 1}"})
    assert first.status_code == 206 and first.content == data[:half]
    rest = fleet.call("GET", url, headers={"Range": f"bytes={half}-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {half}-{len(data) - 1}/{len(data)}"
    assert first.content + rest.content == data
    # a range past the end is 416 with the real size
    beyond = fleet.call("GET", url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    # by name@version too
    assert fleet.call("GET", "/v1/bundles/det@1.0.0/download").content == data


def test_delete_is_refused_while_a_rollout_uses_the_bundle(fleet, bundles) -> None:
    fleet.trust(bundles["key"])
    bid = push(fleet, bundles["v1"]).json()["id"]
    with fleet.server.store.session() as s:
        s.add(Rollout(id="ro-1", bundle_id=bid, state="running"))
    r = fleet.call("DELETE", f"/v1/bundles/{bid}")
    assert r.status_code == 409 and "ro-1" in r.json()["detail"]
    assert fleet.call("GET", f"/v1/bundles/{bid}").json()["in_use_by_rollouts"] == ["ro-1"]
    assert fleet.server.context.artifacts.exists(bid)
    # once the rollout is gone the bundle can be deleted, file and all
    with fleet.server.store.session() as s:
        s.delete(s.get(Rollout, "ro-1"))
    r = fleet.call("DELETE", f"/v1/bundles/{bid}", fleet.token("deployer"))
    assert r.status_code == 200 and r.json()["id"] == bid
    assert fleet.call("GET", f"/v1/bundles/{bid}").status_code == 404
    assert not fleet.server.context.artifacts.exists(bid)
    actions = [e["action"] for e in fleet.call("GET", "/v1/audit", params={"target": bid}).json()]
    assert actions == ["bundle.delete", "bundle.upload"]


def test_trusting_a_private_key_is_refused(sqlite_fleet, bundles) -> None:
    r = sqlite_fleet.call("POST", "/v1/keys",
                          json={"name": "oops", "public_pem": bundles["key"].private_pem().decode()})
    assert r.status_code == 400 and "private key" in r.json()["detail"]
    r = sqlite_fleet.call("POST", "/v1/keys", json={"name": "junk", "public_pem": "-----BEGIN PUBLIC KEY-----"})
    assert r.status_code == 400


def test_nul_bytes_in_references_are_a_client_error_on_every_database(fleet) -> None:  # type: ignore[no-untyped-def]
    # PostgreSQL refuses NUL in text; found by the schema-driven test as a 500 before.
    assert fleet.call("GET", "/v1/bundles/a%00b").status_code == 404
    r = fleet.call("POST", "/v1/rollouts", json={"bundle": "m\u0000@1.0.0", "waves": [100]})
    assert 400 <= r.status_code < 500, r.text
    r = fleet.call("POST", "/v1/enrollment-tokens", json={"group": "g\u0000", "tags": []})
    assert 400 <= r.status_code < 500, r.text
