"""The fleet's capture routes: idempotent device upload under a size limit, filtered and paged listing,
the sample's file, deletion and retention (both audited)."""

from __future__ import annotations

import struct
import time

import numpy as np

from edgeml.jsontypes import JSON
from edgeml_agent.capture.spool import encode_sample, new_capture_id
from tests.fleet.conftest import Fleet


def _body(capture_id: str, *, model: str = "m", trigger: str = "random", size: int = 16) -> bytes:
    meta: dict[str, JSON] = {"id": capture_id, "model": model, "version": "1.0.0", "trigger": trigger,
                             "figures": {"rate": 1.0}, "ts": time.time()}
    return encode_sample(meta, {"x": np.zeros((1, size), np.float32)}, {"y": np.ones((1, 3), np.float32)})


def _put(fleet: Fleet, token: str, capture_id: str, body: bytes):
    return fleet.call("PUT", f"/v1/captures/{capture_id}", token, content=body,
                      headers={"Content-Type": "application/octet-stream"})


def test_upload_is_idempotent_per_device_and_capture_id(sqlite_fleet: Fleet) -> None:
    fleet = sqlite_fleet
    device = fleet.enroll()
    capture_id = new_capture_id()
    first = _put(fleet, device["api_token"], capture_id, _body(capture_id))
    assert first.status_code == 201, first.text
    assert first.json()["tensors"]["in/x"] == {"dtype": "float32", "shape": [1, 16]}
    again = _put(fleet, device["api_token"], capture_id, _body(capture_id))
    assert again.status_code == 200
    page = fleet.call("GET", "/v1/captures").json()
    assert [c["capture_id"] for c in page["captures"]] == [capture_id]
    file = fleet.call("GET", f"/v1/captures/{device['device_id']}/{capture_id}/file")
    assert file.status_code == 200 and file.content[:2] == b"PK"
    no_image = fleet.call("GET", f"/v1/captures/{device['device_id']}/{capture_id}/thumbnail")
    assert no_image.status_code == 404   # a [1, 16] vector is not an image


def test_an_image_input_gets_a_png_thumbnail(sqlite_fleet: Fleet) -> None:
    fleet = sqlite_fleet
    device = fleet.enroll()
    capture_id = new_capture_id()
    meta: dict[str, JSON] = {"id": capture_id, "model": "cam", "version": "1.0.0", "trigger": "drift",
                             "figures": {"drift": 0.5}, "ts": time.time()}
    image = np.random.default_rng(0).random((1, 3, 200, 120), dtype=np.float32)   # NCHW
    assert _put(fleet, device["api_token"], capture_id, encode_sample(meta, {"img": image}, None)).status_code == 201
    r = fleet.call("GET", f"/v1/captures/{device['device_id']}/{capture_id}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", r.content[16:26])
    assert (width, height, depth, colour) == (40, 67, 8, 2)   # RGB, shrunk by a stride of 3 to <= 96 a side


def test_only_devices_upload_and_bad_or_oversized_samples_are_refused(sqlite_fleet: Fleet) -> None:
    fleet = sqlite_fleet
    device = fleet.enroll()
    capture_id = new_capture_id()
    assert _put(fleet, fleet.admin_token, capture_id, _body(capture_id)).status_code == 403
    assert _put(fleet, device["api_token"], capture_id, b"not a zip").status_code == 400
    wrong = _put(fleet, device["api_token"], "other-id", _body(capture_id))
    assert wrong.status_code == 400 and "capture id" in wrong.json()["detail"]
    huge = _put(fleet, device["api_token"], capture_id, _body(capture_id, size=5_000_000))
    assert huge.status_code == 413
    assert fleet.call("GET", "/v1/captures").json()["captures"] == []


def test_list_filters_and_pages_newest_first(fleet: Fleet) -> None:
    """On SQLite and PostgreSQL: the keyset cursor compares (received_at, device, id) tuples."""
    a, b = fleet.enroll(), fleet.enroll()
    ids = []
    for i in range(5):
        capture_id = new_capture_id()
        device = a if i % 2 == 0 else b
        trigger = "drift" if i < 2 else "random"
        assert _put(fleet, device["api_token"], capture_id, _body(capture_id, trigger=trigger)).status_code == 201
        ids.append(capture_id)
    drift = fleet.call("GET", "/v1/captures", params={"trigger": "drift"}).json()["captures"]
    assert sorted(c["capture_id"] for c in drift) == sorted(ids[:2])
    mine = fleet.call("GET", "/v1/captures", params={"device": a["device_id"], "since": "1h"}).json()["captures"]
    assert sorted(c["capture_id"] for c in mine) == sorted(ids[0::2])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = fleet.call("GET", "/v1/captures", params=params).json()
        seen += [c["capture_id"] for c in page["captures"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert fleet.call("GET", "/v1/captures", params={"since": "yesterday"}).status_code == 400


def test_delete_and_retention_are_audited_and_remove_the_files(sqlite_fleet: Fleet) -> None:
    fleet = sqlite_fleet
    device = fleet.enroll()
    ids = [new_capture_id() for _ in range(4)]
    for capture_id in ids[:3]:
        assert _put(fleet, device["api_token"], capture_id, _body(capture_id, size=8 + len(capture_id))).status_code \
            == 201
    r = fleet.call("PUT", "/v1/captures-retention", json={"max_age_days": 30, "max_per_device_model": 2})
    assert r.status_code == 200, r.text
    assert _put(fleet, device["api_token"], ids[3], _body(ids[3], size=99)).status_code == 201
    left = [c["capture_id"] for c in fleet.call("GET", "/v1/captures").json()["captures"]]
    assert left == [ids[3], ids[2]]   # the oldest beyond 2 per (device, model) went
    assert fleet.call("DELETE", "/v1/captures").status_code == 400   # no filter: nothing deleted by accident
    gone = fleet.call("DELETE", "/v1/captures", params={"model": "m", "device": device["device_id"]})
    assert gone.json() == {"deleted": 2}
    assert fleet.call("GET", f"/v1/captures/{device['device_id']}/{ids[3]}/file").status_code == 404
    artifacts = fleet.server.config.data_dir / "artifacts"
    assert not [p for p in artifacts.rglob("*") if p.is_file() and p.parent.name != "tmp"]
    actions = [e["action"] for e in fleet.call("GET", "/v1/audit").json()]
    assert "captures.retention" in actions and "captures.delete" in actions
