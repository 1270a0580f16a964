"""Delta updates end to end: a real ``edgeml-fleet serve`` process, a real enrolled ``edgeml-agent``
daemon that talks to the fleet through a recording proxy (the fleet's request log), rollouts N → N+1.

The device rebuilds 2.0.0 from its installed 1.0.0 and a delta — the log shows the delta route and no
full download; then a corrupted delta for 3.0.0 (planted in the fleet's artifact store) is refused after
applying it (its result does not match the signed tar hash) and the full bundle is downloaded instead:
the update still succeeds."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle import SigningKey
from edgeml.bundle.delta import make_delta, tar_stream
from edgeml.fileio import sha256_file
from edgeml_agent.updates.delta import installed_dir
from tests.fleet.rollouts.real_fleet import Device, RealFleet, wait_for
from tests.support.bundles import make_bundle
from tests.support.recording_proxy import RecordingProxy
from tests.updates.helpers import slow_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _retrained_head(src: Path, out: Path) -> Path:
    """``src`` with only its last weight tensor changed: a retrain of the output layer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    last = model.graph.initializer[-1]
    w = numpy_helper.to_array(last)
    last.CopyFrom(numpy_helper.from_array((w * 1.01 + 0.001).astype(np.float32), last.name))
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("delta")
    key = SigningKey.generate()
    out = tmp / "bundles"
    out.mkdir()
    v1 = slow_model(tmp / "v1.onnx", layers=2, width=192, seed=5)     # ~0.3 MB of weights
    v2 = _retrained_head(v1, tmp / "v2.onnx")
    v3 = _retrained_head(v2, tmp / "v3.onnx")
    return tmp, key, {v: make_bundle(out, key, m, name="d", version=v) for v, m in
                      (("1.0.0", v1), ("2.0.0", v2), ("3.0.0", v3))}


@pytest.fixture(scope="module")
def fleet(built: tuple[Path, SigningKey, dict[str, Path]]) -> Iterator[tuple[RealFleet, RecordingProxy, Device]]:
    tmp, key, found = built
    with ExitStack() as stack:
        fleet = RealFleet(tmp, stack, key, found)
        proxy = stack.enter_context(RecordingProxy(fleet.server.url))
        direct = fleet.server
        fleet.server = dataclasses.replace(direct, url=proxy.url)   # the device enrols with (and uses) the proxy
        device = fleet.enroll("cam-0", "cams", [found["1.0.0"]])
        fleet.server = direct
        # the bundle file of the installed version, as an agent keeps it after an update it committed
        kept = installed_dir(tmp / "cam-0" / "updates", "d")
        kept.mkdir(parents=True)
        shutil.copy(found["1.0.0"], kept / "1.0.0.edgepkg")
        yield fleet, proxy, device


def _update(fleet: RealFleet, device: Device, version: str) -> None:
    stopped = fleet.complete(f"d@{version}", min_requests=0)   # with light traffic: a wave is judged on telemetry
    assert stopped["state"] == "completed", (stopped, fleet.logs())
    wait_for(f"d@{version} served", lambda: device.answering("d") == version, 30, fleet.logs)


def test_the_device_updates_with_a_delta_and_never_downloads_the_full_bundle(fleet: tuple[RealFleet, RecordingProxy,
                                                                                          Device]) -> None:
    real, proxy, device = fleet
    _update(real, device, "2.0.0")
    assert proxy.paths("/v1/bundles/d@2.0.0/delta") == [("GET", "/v1/bundles/d@2.0.0/delta?from=1.0.0", 200)]
    assert [p for _, p, _ in proxy.log if p.endswith("/download")] == []
    made = next((real.tmp / "fleet" / "artifacts" / "deltas").glob("*.zst"))
    assert made.stat().st_size < real.tmp.joinpath("bundles", "d-2.0.0.edgepkg").stat().st_size / 5


def test_a_corrupted_delta_falls_back_to_the_full_download(fleet: tuple[RealFleet, RecordingProxy, Device],
                                                           built: tuple[Path, SigningKey, dict[str, Path]]) -> None:
    real, proxy, device = fleet
    found = built[2]
    v2, v3 = sha256_file(found["2.0.0"]), sha256_file(found["3.0.0"])
    bad = bytearray(make_delta(tar_stream(found["2.0.0"]), tar_stream(found["3.0.0"])))
    bad[len(bad) // 2] ^= 0xFF
    planted = real.tmp / "fleet" / "artifacts" / "deltas" / f"{v2}-{v3}.zst"
    planted.write_bytes(bytes(bad))   # the fleet's cached delta, damaged on disk
    _update(real, device, "3.0.0")
    asked = [(p, s) for _, p, s in proxy.log if ("/v1/bundles/" in p and "3.0.0" in p) or v3 in p]
    assert asked == [("/v1/bundles/d@3.0.0/delta?from=2.0.0", 200), (f"/v1/bundles/{v3}/download", 200)], proxy.log


def test_export_mirror_writes_the_layout_a_static_server_serves(fleet: tuple[RealFleet, RecordingProxy, Device],
                                                                built: tuple[Path, SigningKey, dict[str, Path]],
                                                                tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    real = fleet[0]
    env = {**os.environ, "EDGEML_FLEET_URL": real.server.url, "EDGEML_FLEET_TOKEN": real.admin}
    run = [sys.executable, "-m", "edgeml.fleet.cli", "bundles", "export-mirror", str(tmp_path / "mirror")]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "3 bundle(s) written, 0 already there" in out.stdout
    for version, bundle in built[2].items():
        assert sha256_file(tmp_path / "mirror" / "d" / f"{version}.edgepkg") == sha256_file(bundle)
    again = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
    assert "0 bundle(s) written, 3 already there" in again.stdout, again.stderr
