"""Tampered or unsafe updates are refused, each with its own reason, while the old model keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import desired
from tests.updates.test_machine_inprocess import Rig


@pytest.fixture
def rig(tmp_path: Path, signing_key: SigningKey) -> Iterator[Rig]:
    r = Rig(tmp_path, signing_key, SigningKey.generate(), targets=("x86-cpu",))
    yield r
    r.close()


def _old_model_still_serves(rig: Rig) -> None:
    assert rig.serving() == "1.0.0"
    assert rig.agent.store.current("m") == "1.0.0"
    assert rig.agent.store.versions("m") == ["1.0.0"]  # nothing half-installed was left behind


def _refused_update(rig: Rig) -> str:
    result = rig.wait_idle()
    assert result["committed"] == {}
    states = [h[3] for h in result["history"]]
    assert "switching" not in states, "a refused bundle must never reach the switch"
    return str(result["reason"])


def test_flipped_byte_in_the_served_bundle(rig: Rig, tmp_path: Path) -> None:
    bundle = rig.bundles["2.0.0"]
    good = desired(rig.fleet_key, bundle, rig.server.url(bundle.name), version="2.0.0")
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    rig.updates.offer(good)
    assert "sha256 differs from the signed desired state" in _refused_update(rig)
    _old_model_still_serves(rig)


def test_bundle_signed_by_an_untrusted_key(rig: Rig, tmp_path: Path) -> None:
    rogue = make_bundle(tmp_path / "bundles", SigningKey.generate(), tiny_mlp(tmp_path / "rogue.onnx", seed=9),
                        name="m", version="2.5.0")
    rig.updates.offer(desired(rig.fleet_key, rogue, rig.server.url(rogue.name), version="2.5.0"))
    assert "not trusted" in _refused_update(rig)
    _old_model_still_serves(rig)


def test_replayed_older_bundle_is_refused_by_anti_rollback(rig: Rig, tmp_path: Path) -> None:
    old = make_bundle(tmp_path / "bundles", rig.key, tiny_mlp(tmp_path / "old.onnx", seed=5), version="0.9.0")
    rig.updates.offer(desired(rig.fleet_key, old, rig.server.url(old.name), version="0.9.0"))
    assert "anti-rollback" in _refused_update(rig)
    _old_model_still_serves(rig)


def test_replayed_older_desired_state_is_refused(rig: Rig) -> None:
    rig.offer("2.0.0", serial=100)
    rig.wait_idle()
    assert rig.serving() == "2.0.0"
    rig.offer("1.0.0", serial=50, rollback=True)
    time.sleep(0.5)
    assert "replay refused" in str(rig.updates.last_refusal)
    assert rig.serving() == "2.0.0"


def test_expired_desired_state(rig: Rig) -> None:
    rig.offer("2.0.0", expires_in=-5)
    time.sleep(0.5)
    assert "expired" in str(rig.updates.last_refusal)
    assert rig.updates.records.load().history == []
    _old_model_still_serves(rig)


def test_desired_state_for_another_device(rig: Rig) -> None:
    rig.offer("2.0.0", device="someone-else")
    time.sleep(0.5)
    assert "addressed to device someone-else" in str(rig.updates.last_refusal)
    _old_model_still_serves(rig)


def test_desired_state_signed_by_an_unknown_key(rig: Rig) -> None:
    bundle = rig.bundles["2.0.0"]
    rig.updates.offer(desired(SigningKey.generate(), bundle, rig.server.url(bundle.name), version="2.0.0"))
    time.sleep(0.5)
    assert "does not trust" in str(rig.updates.last_refusal)
    _old_model_still_serves(rig)


def test_bundle_for_another_target(rig: Rig, tmp_path: Path) -> None:
    npu = make_bundle(tmp_path / "bundles", rig.key, tiny_mlp(tmp_path / "npu.onnx", seed=4), version="2.1.0",
                      target="jetson-orin")
    rig.updates.offer(desired(rig.fleet_key, npu, rig.server.url(npu.name), version="2.1.0"))
    assert "built for target jetson-orin" in _refused_update(rig)
    _old_model_still_serves(rig)


def test_truncated_downloads(rig: Rig) -> None:
    rig.server.behaviour = "truncate"
    rig.offer("2.0.0")
    assert "failed 2 times" in _refused_update(rig)
    _old_model_still_serves(rig)
    assert not list((rig.data / "updates" / "downloads").glob("*.part"))


def test_oversized_download(rig: Rig) -> None:
    rig.server.behaviour = "oversize"
    rig.offer("2.0.0")
    assert "more than the" in _refused_update(rig)
    _old_model_still_serves(rig)
