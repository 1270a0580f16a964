"""The fleet's own gates on REAL telemetry from real agents, and the fleet-driven revert.

One fleet server (embedded broker) and two ``edgeml-agent`` daemons (cam-0 is wave 1, cam-1 wave 2).
Each test rolls out its own model. The new version always commits on the device (the tests keep
traffic off during the agent's probation, which then judges on the smoke test alone); only afterwards
does live traffic show what is wrong with it, so what stops the rollout is the fleet's gate on the
telemetry the agents sent, and what brings the devices back is the fleet's ``rollback: true`` desired
state — never the agent's own probation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeml.bundle import SigningKey
from edgeml.compiler.stats import reference_stats
from edgeml.runtimes import open_model
from tests.fleet.rollouts.real_fleet import ONE_ROW, THREE_ROWS, Load, RealFleet, real_fleet, wait_for
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import failing_on_batches, slow_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BIG_BATCH = np.random.default_rng(1).random((64, 4)).tolist()   # makes the slow version's cost show


def _drift_stats(model: Path) -> dict[str, Any]:
    """Reference statistics of calibration-like inputs (normal around 0), as ``edgeml build`` writes them."""
    calib = np.random.default_rng(0).normal(0.0, 1.0, (512, 4)).astype(np.float32)
    with open_model(model, "onnxruntime") as backend:
        outputs = backend.run({"x": calib})
    return dict(reference_stats({"x": calib}, outputs, samples=len(calib)))


def draws(mean: float, seed: int) -> Callable[[], list[list[float]]]:
    """Fresh inputs for each request (8 rows around ``mean``): a live distribution, not one repeated sample."""
    rng = np.random.default_rng(seed)
    return lambda: list(rng.normal(mean, 1.0, (8, 4)).tolist())


def _bundles(tmp: Path, key: SigningKey) -> dict[str, Path]:
    src, out = tmp / "src", tmp / "bundles"
    src.mkdir()
    out.mkdir()
    good, v2 = tiny_mlp(src / "good.onnx", seed=0), tiny_mlp(src / "v2.onnx", seed=1)
    stats = {"reference_stats": _drift_stats(good)}
    stats2 = {"reference_stats": _drift_stats(v2)}   # each bundle carries its own model's output statistics
    return {
        "err@1": make_bundle(out, key, good, name="err", version="1.0.0"),
        "err@2": make_bundle(out, key, failing_on_batches(src / "batches.onnx"), name="err", version="2.0.0"),
        "lat@1": make_bundle(out, key, good, name="lat", version="1.0.0"),
        "lat@2": make_bundle(out, key, slow_model(src / "slow.onnx", layers=12, width=256), name="lat",
                             version="2.0.0"),
        "drift@1": make_bundle(out, key, good, name="drift", version="1.0.0", extra=stats),
        "drift@2": make_bundle(out, key, v2, name="drift", version="2.0.0", extra=stats2),
        "calm@1": make_bundle(out, key, good, name="calm", version="1.0.0", extra=stats),
        "calm@2": make_bundle(out, key, v2, name="calm", version="2.0.0", extra=stats2),
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealFleet]:
    tmp = tmp_path_factory.mktemp("gates")
    key = SigningKey.generate()
    bundles = _bundles(tmp, key)
    installed = [bundles[f"{model}@1"] for model in ("err", "lat", "drift", "calm")]
    with real_fleet(tmp, key, bundles, agents=2, installed=installed) as fleet:
        yield fleet


def test_error_rate_on_live_traffic_aborts_and_the_fleet_sends_committed_devices_back(fleet: RealFleet) -> None:
    cam0, cam1 = fleet.devices
    fleet.wait_installed([cam0, cam1], "err", "1.0.0")
    # given err@2, which answers one row (its smoke test, cam-0's traffic) but fails on three rows,
    # rolled out in two waves; a failed gate aborts, which sends EVERY device that got it back
    with Load(cam0, "err", ONE_ROW) as steady:
        ro = fleet.rollout("err@2.0.0", waves=[50, 100], on_failure="abort")
        # when cam-0 commits it in wave 1 and that wave passes on its (successful) traffic
        fleet.wait_member(ro, cam0, "installed")
        wait_for("wave 1 to pass", lambda: fleet.decisions(ro, "rollout.wave_passed"), 45, fleet.logs)
        # and cam-1 commits it in wave 2, after which its live traffic (three rows) fails
        fleet.wait_member(ro, cam1, "installed")
        with Load(cam1, "err", THREE_ROWS) as failing:
            stopped = fleet.wait_stopped(ro)
            # then the fleet's error-rate gate failed on the errors the agents reported
            assert stopped["state"] == "aborted", stopped
            assert stopped["reason"].startswith("error rate"), stopped["reason"]   # the fleet's gate, not the agent
            (failed,) = fleet.decisions(ro, "rollout.gate_failed")
            assert failed["wave"] == 2 and failed["figures"]["new"]["errors"] > 0
            # and both devices, cam-0 committed a wave earlier, were sent back with a rollback desired state
            assert failed["reverted"] == sorted([cam0.device_id, cam1.device_id])
            # which the agents accept: each returns to 1.0.0 and answers from it, three rows included
            wait_for("both agents to serve err@1.0.0 again",
                     lambda: all(d.answering("err", THREE_ROWS) == "1.0.0" for d in (cam0, cam1)), 45, fleet.logs)
        fleet.wait_installed([cam0, cam1], "err", "1.0.0")
    assert failing.failures > 0 and steady.answers["2.0.0"] > 0   # the live traffic really met 2.0.0
    # the agents went back through their update machine on the fleet's word, as a rollback to 1.0.0
    for device in (cam0, cam1):
        back = [e["body"] for e in fleet.events(device) if e["kind"] == "update"
                and e["body"].get("model") == "err" and e["body"].get("version") == "1.0.0"]
        assert any(b["state"] == "committed" for b in back), back
    assert {m["device"]: m["state"] for m in fleet.status(ro)["device_list"]} == {
        cam0.device_id: "reverted", cam1.device_id: "reverted"}


def test_a_slower_version_fails_the_latency_gate_and_the_wave_is_sent_back(fleet: RealFleet) -> None:
    cam0, cam1 = fleet.devices
    # given the fleet knows 1.0.0's latency from live traffic on both devices
    with Load(cam0, "lat", BIG_BATCH), Load(cam1, "lat", BIG_BATCH):
        wait_for("lat@1.0.0 telemetry",
                 lambda: any(h["model"] == "lat" and h["version"] == "1.0.0" and h["requests"] >= 20
                             for h in fleet.http.get("/v1/health").json()),
                 30, fleet.logs)
    # when a correct but much slower 2.0.0 is rolled out (p50 may grow by half at most) and cam-0 commits it
    # (observed for 6 s: 2.0.0's traffic starts once cam-0 has installed it, and its telemetry must land in time)
    ro = fleet.rollout("lat@2.0.0", waves=[50, 100], max_latency_regression=0.5, observe_s=6)
    fleet.wait_member(ro, cam0, "installed")
    with Load(cam0, "lat", BIG_BATCH) as slow:
        stopped = fleet.wait_stopped(ro)
        # then the latency gate, judged against 1.0.0's p50, pauses the rollout and sends cam-0 back
        assert stopped["state"] == "paused", stopped
        assert stopped["reason"].startswith("p50 latency"), stopped["reason"]
        (failed,) = fleet.decisions(ro, "rollout.gate_failed")
        assert failed["figures"]["new"]["p50_ms"] > failed["figures"]["latency_limit_ms"]
        assert failed["reverted"] == [cam0.device_id]
        wait_for("cam-0 to serve lat@1.0.0 again", lambda: cam0.serving("lat") == "1.0.0", 45, fleet.logs)
    assert slow.answers["2.0.0"] > 0 and slow.failures == 0    # slow, but correct
    # cam-1 (wave 2) was never sent 2.0.0
    assert fleet.member(ro, cam1)["state"] == "pending" and cam1.serving("lat") == "1.0.0"


def test_inputs_shifted_from_the_reference_fail_the_drift_gate(fleet: RealFleet) -> None:
    cam0, cam1 = fleet.devices
    # given 2.0.0 with the reference statistics of inputs around 0, rolled out with a drift limit
    ro = fleet.rollout("drift@2.0.0", waves=[50, 100], max_drift=0.25)
    fleet.wait_member(ro, cam0, "installed")
    # when cam-0's live inputs are centred on 3 instead
    with Load(cam0, "drift", draws(mean=3.0, seed=2)):
        stopped = fleet.wait_stopped(ro)
    # then the drift gate pauses the rollout on the PSI the fleet computed from cam-0's telemetry
    assert stopped["state"] == "paused", stopped
    assert stopped["reason"].startswith("input drift"), stopped["reason"]
    (failed,) = fleet.decisions(ro, "rollout.gate_failed")
    assert failed["figures"]["new"]["drift"] > 0.25 and failed["reverted"] == [cam0.device_id]
    assert failed["figures"]["new"]["devices"] == 1   # the wave's device only: cam-1 never ran 2.0.0
    # and it is the input tensor that drifted, as cam-0's telemetry shows
    (score,) = [d for d in fleet.http.get(f"/v1/telemetry/{cam0.device_id}").json()["drift"]
                if (d["model"], d["version"]) == ("drift", "2.0.0")]
    assert score["tensors"]["inputs/x"] > 0.25, score
    wait_for("cam-0 to serve drift@1.0.0 again", lambda: cam0.serving("drift") == "1.0.0", 45, fleet.logs)
    assert fleet.member(ro, cam1)["state"] == "pending" and cam1.serving("drift") == "1.0.0"


def test_inputs_like_the_reference_pass_the_same_drift_gate(fleet: RealFleet) -> None:
    """The control for the test above: the same limit, inputs drawn like the calibration data. The
    devices saw shifted inputs on 1.0.0 before: the gate judges 2.0.0's own drift, per version."""
    cam0, cam1 = fleet.devices
    with Load(cam0, "calm", draws(mean=3.0, seed=5)), Load(cam1, "calm", draws(mean=3.0, seed=6)):
        wait_for("calm@1.0.0 to drift on both devices", lambda: sum(
            d["model"] == "calm" and d["version"] == "1.0.0" and (d["score"] or 0) > 0.25
            for cam in (cam0, cam1) for d in fleet.http.get(f"/v1/telemetry/{cam.device_id}").json()["drift"]) == 2,
            20, fleet.logs)
    ro = fleet.rollout("calm@2.0.0", waves=[50, 100], max_drift=0.25)
    with Load(cam0, "calm", draws(mean=0.0, seed=3)), Load(cam1, "calm", draws(mean=0.0, seed=4)):
        done = fleet.wait_stopped(ro)
    assert done["state"] == "completed", done["reason"]
    figures = [p["figures"] for p in fleet.decisions(ro, "rollout.wave_passed")]
    drifts = [f["new"]["drift"] for f in figures]
    assert len(drifts) == 2 and all(d is not None and d <= 0.25 for d in drifts), drifts
    assert figures[0]["previous"]["drift"] > 0.25, figures[0]   # 1.0.0's drift was there, and not judged
    assert cam0.serving("calm") == cam1.serving("calm") == "2.0.0"
