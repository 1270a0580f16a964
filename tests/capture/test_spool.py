"""The device's capture spool (crash-safe files + index, quota), the uploader (idempotent retries) and the
component's promise that a request never waits on capture."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeml.desired import DesiredState
from edgeml.jsontypes import JSON
from edgeml_agent.capture.component import CaptureComponent
from edgeml_agent.capture.spool import CaptureSpool, encode_sample, new_capture_id, read_meta
from edgeml_agent.capture.uploader import CaptureUploader, UploadUnreachable
from edgeml_agent.config import parse_config
from edgeml_agent.registry import Observation
from edgeml_agent.services import Services


def _sample(spool: CaptureSpool, size: int = 100, trigger: str = "random") -> str:
    capture_id = new_capture_id()
    meta: dict[str, JSON] = {"id": capture_id, "model": "m", "version": "1.0.0", "trigger": trigger,
                             "figures": {}, "ts": time.time()}
    spool.add(capture_id, meta, encode_sample(meta, {"x": np.zeros(size, np.uint8)}, None))
    return capture_id


def test_a_sample_keeps_its_tensors_and_metadata(tmp_path: Path) -> None:
    meta: dict[str, JSON] = {"id": "c1", "model": "m", "version": "1.0.0", "trigger": "drift",
                             "figures": {"drift": 0.4}, "ts": 1.0}
    data = encode_sample(meta, {"x": np.arange(4, dtype=np.float32)}, {"y": np.ones((1, 3), np.float32)})
    assert read_meta(data) == meta
    path = tmp_path / "s.npz"
    path.write_bytes(data)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["__meta__", "in/x", "out/y"]
        assert npz["in/x"].tolist() == [0, 1, 2, 3]


def test_the_quota_drops_the_oldest_first_and_counts_it(tmp_path: Path) -> None:
    spool = CaptureSpool(tmp_path, quota_bytes=2000)
    ids = [_sample(spool, 400) for _ in range(6)]
    kept = [c.id for c in spool.pending(100)]
    assert kept == ids[-len(kept):] and len(kept) < 6
    assert spool.dropped == 6 - len(kept) and spool.bytes <= 2000
    assert sorted(p.stem for p in (tmp_path / "samples").glob("*.npz")) == sorted(kept)
    spool.close()
    assert CaptureSpool(tmp_path).dropped == 6 - len(kept)   # the count survives a restart


def test_a_crash_between_rename_and_index_loses_nothing(tmp_path: Path) -> None:
    spool = CaptureSpool(tmp_path)
    first = _sample(spool)
    spool.close()
    # a file renamed into place whose index row never got written, and a half-written temporary file
    capture_id = new_capture_id()
    meta: dict[str, JSON] = {"id": capture_id, "model": "m", "version": "1.0.0", "trigger": "random",
                             "figures": {}, "ts": time.time()}
    (tmp_path / "samples" / f"{capture_id}.npz").write_bytes(encode_sample(meta, {"x": np.zeros(3)}, None))
    (tmp_path / "tmp" / "half.npz").write_bytes(b"PK\x03")
    reopened = CaptureSpool(tmp_path)
    assert [c.id for c in reopened.pending()] == [first, capture_id]
    assert not list((tmp_path / "tmp").iterdir())


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, **data: JSON) -> None:
        self.sent.append((kind, data))


class Fleet:
    """Answers PUTs like the fleet: 201 once per id, 200 after; can be down or refuse."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.down = False
        self.refuse: set[str] = set()

    def put(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        if self.down:
            raise UploadUnreachable("connection refused")
        capture_id = url.rsplit("/", 1)[1]
        assert headers["Authorization"] == "Bearer tok"
        if capture_id in self.refuse:
            return 400
        if capture_id in self.stored:
            return 200
        self.stored[capture_id] = body
        return 201


def test_uploads_survive_an_outage_and_a_refusal_drops_only_that_sample(tmp_path: Path) -> None:
    spool, fleet, events = CaptureSpool(tmp_path), Fleet(), Events()
    ids = [_sample(spool) for _ in range(3)]
    uploader = CaptureUploader(spool, "http://fleet", "tok", events, put=fleet.put)
    fleet.down = True
    with pytest.raises(UploadUnreachable):
        uploader.send_pending()
    assert len(spool) == 3 and not events.sent   # nothing lost, no notice before the fleet has the bytes
    fleet.down, fleet.refuse = False, {ids[1]}
    assert uploader.send_pending()
    assert sorted(fleet.stored) == sorted([ids[0], ids[2]]) and len(spool) == 0
    assert [(k, d["capture_id"]) for k, d in events.sent] == [("capture", ids[0]), ("capture_refused", ids[1]),
                                                              ("capture", ids[2])]
    assert uploader.refused == 1 and uploader.uploaded == 2


def test_a_sample_sent_again_after_a_crash_is_stored_once(tmp_path: Path) -> None:
    spool, fleet = CaptureSpool(tmp_path), Fleet()
    capture_id = _sample(spool)
    fleet.stored[capture_id] = b"sent before the crash"   # the fleet has it; the device never learnt so
    uploader = CaptureUploader(spool, "http://fleet", "tok", Events(), put=fleet.put)
    assert uploader.send_pending()
    assert fleet.stored[capture_id] == b"sent before the crash" and len(spool) == 0


def _wait(stall: threading.Event) -> None:
    stall.wait(30)


def _component(tmp_path: Path, stall: threading.Event | None = None, queue_size: int = 4) -> CaptureComponent:
    config = parse_config({"data_dir": str(tmp_path / "agent")})
    component = CaptureComponent(Services.build(config), queue_size=queue_size,
                                 before_write=(lambda: _wait(stall)) if stall is not None else None)
    component.desired_changed(DesiredState("d", 0, 0, 1, (), {}, None, b"", capture={
        "m": {"enabled": True, "triggers": {"random": {"rate": 1.0}},
              "budget": {"samples_per_hour": 1000}}}))
    return component


def _observation(i: int) -> Observation:
    return Observation("m", "1.0.0", 0.001, 200, None, {"x": np.full((1, 4), i, np.float32)},
                       {"y": np.ones((1, 3), np.float32)})


def test_a_stalled_disk_never_blocks_a_request_full_queue_drops_and_counts(tmp_path: Path) -> None:
    stall = threading.Event()
    component = _component(tmp_path, stall)
    component.start()
    try:
        started = time.perf_counter()
        for i in range(200):
            component.observe(_observation(i))
        elapsed = time.perf_counter() - started
        # the writer holds one sample at the stalled disk, the queue 4 more: the rest are dropped, counted
        assert component.queue_full >= 195 - 1
        assert elapsed < 5.0   # not a timing goal: only "did not wait for the 30 s stall"
    finally:
        stall.set()
        component.stop()


def test_observed_requests_are_written_then_the_policy_override_is_kept(tmp_path: Path) -> None:
    component = _component(tmp_path, queue_size=64)
    component.start()
    try:
        for i in range(5):
            component.observe(_observation(i))
        deadline = time.monotonic() + 10
        while component.captured < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert component.captured == 5 and component.queue_full == 0
        rows = component.spool.pending()
        assert {r.trigger for r in rows} == {"random"}
        with np.load(rows[0].path, allow_pickle=False) as npz:
            assert sorted(npz.files) == ["__meta__", "in/x", "out/y"]
    finally:
        component.stop()
    again = CaptureComponent(Services.build(parse_config({"data_dir": str(tmp_path / "agent")})))
    assert again._resolve(("m", "1.0.0")).random_rate == 1.0   # the fleet's override survived the restart
    again.spool.close()
