"""The fleet's delta route and the download links it signs into desired states (mirror, fleet route,
tar-stream hash): real app, real SQLite store, real artifact directory."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey
from edgeml.bundle.delta import apply_delta, tar_stream
from edgeml.fleet import bundle_links
from edgeml.fleet.rollouts.desired_docs import model_entry
from edgeml.fleet.store.models import Bundle
from tests.fleet.conftest import Fleet, make_fleet
from tests.support.bundles import make_bundle
from tests.updates.helpers import slow_model


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path, Path]:
    import onnx
    from onnx import numpy_helper

    d = tmp_path_factory.mktemp("delta-api")
    key = SigningKey.generate()
    v1 = slow_model(d / "v1.onnx", layers=2, width=128, seed=4)
    model = onnx.load(str(v1))
    last = model.graph.initializer[-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) * 2, last.name))   # a new output layer
    onnx.save(model, str(d / "v2.onnx"))
    return (key, make_bundle(d, key, v1, name="det", version="1.0.0"),
            make_bundle(d, key, d / "v2.onnx", name="det", version="2.0.0"))


@pytest.fixture
def fleet(tmp_path: Path, versions: tuple[SigningKey, Path, Path]) -> Iterator[Fleet]:
    for f in make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'fleet.db'}",
                        bundle_mirror="https://cdn.example/edgeml"):
        f.trust(versions[0])
        for bundle in versions[1:]:
            r = f.call("POST", "/v1/bundles", content=bundle.read_bytes(),
                       headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        yield f
    bundle_links.configure(bundle_links.BundleLinks())


def test_the_delta_route_answers_a_small_delta_that_rebuilds_the_new_tar_stream(
        fleet: Fleet, versions: tuple[SigningKey, Path, Path]) -> None:
    _, v1, v2 = versions
    # the delta is made in the background after the upload (request threads never wait for it): on a busy
    # machine the first ask may come before it is ready, and is answered 404 "being made"
    deadline = time.monotonic() + 60
    while True:
        r = fleet.call("GET", "/v1/bundles/det@2.0.0/delta", fleet.token("viewer"), params={"from": "1.0.0"})
        if r.status_code != 404 or "being made" not in r.text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert len(r.content) < v2.stat().st_size / 4
    rebuilt = apply_delta(tar_stream(v1), r.content, max_result_bytes=int(r.headers["x-edgeml-delta-result-size"]))
    assert rebuilt == tar_stream(v2)
    assert r.headers["x-edgeml-delta-result-sha256"] == hashlib.sha256(rebuilt).hexdigest()
    assert r.headers["x-edgeml-delta-base-sha256"] == hashlib.sha256(tar_stream(v1)).hexdigest()
    assert list((fleet.server.context.artifacts.root / "deltas").glob("*.zst"))   # kept for the next device


def test_no_delta_for_an_unknown_base_the_same_version_or_without_a_token(fleet: Fleet) -> None:
    assert fleet.call("GET", "/v1/bundles/det@2.0.0/delta", params={"from": "0.9.0"}).status_code == 404
    same = fleet.call("GET", "/v1/bundles/det@2.0.0/delta", params={"from": "2.0.0"})
    assert same.status_code == 404 and "no delta" in same.json()["detail"]
    assert fleet.http.get("/v1/bundles/det@2.0.0/delta", params={"from": "1.0.0"}).status_code == 401


def test_desired_state_entries_name_the_mirror_the_fleet_route_and_the_tar_hash(
        fleet: Fleet, versions: tuple[SigningKey, Path, Path]) -> None:
    v2 = versions[2]
    bundle_id = hashlib.sha256(v2.read_bytes()).hexdigest()
    with fleet.server.store.session() as session:
        row = session.get(Bundle, bundle_id)
        assert row is not None
        entry = model_entry(row)
    assert entry["url"] == "https://cdn.example/edgeml/det/2.0.0.edgepkg"
    assert entry["fleet_url"] == f"/v1/bundles/{bundle_id}/download"
    assert (entry["tar_sha256"], entry["tar_size"]) == (hashlib.sha256(tar_stream(v2)).hexdigest(),
                                                        len(tar_stream(v2)))


def test_a_mirror_that_is_not_an_http_url_is_refused() -> None:
    from edgeml.errors import ConfigError

    with pytest.raises(ConfigError, match="not an http"):
        bundle_links.check_mirror("ftp://cdn.example/edgeml/")
