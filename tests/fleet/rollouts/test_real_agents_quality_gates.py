"""Quality gates on real processes: the agents' shadow comparison during probation, and drift per device
and version at a low request rate.

One fleet server (embedded broker) and one ``edgeml-agent`` daemon with the DEFAULT statistics budget
(0.2 % of inference time), so what gives the fleet its drift figures at 2 requests a second is the agent's
floor of summarised samples per window, not a test setting. The drift GATE itself (a rollout held by
``max_drift``) is proven in ``test_real_agents_gates.py``; here, the figure it judges: per device and
version, within a few windows of traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeml.bundle import SigningKey
from tests.fleet.rollouts.real_fleet import Load, RealFleet, real_fleet, wait_for
from tests.fleet.rollouts.test_real_agents_gates import _drift_stats, draws
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

INTERVAL_S = 1.0
# As real_fleet.AGENT_EXTRA, but with the default stats budget and its floor (stats_min_samples = 32),
# and a 3 s probation: the shadow needs live requests to compare during it.
AGENT = f"""
[telemetry]
interval_s = {INTERVAL_S}
heartbeat_s = 1
[updates]
poll_interval_s = 1
probation_s = 3
min_requests = 5
download_retry_s = 0.2
"""


def _final_layer(src: Path, dst: Path, scale: float) -> Path:
    """The same MLP with its last layer's weights and bias multiplied by ``scale``: latency and error rate
    unchanged; a negative scale turns every answer's top-1 class into its bottom-1."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name in ("w2", "b2"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, init.name))
    onnx.save(model, str(dst))
    return dst


def _bundles(tmp: Path, key: SigningKey) -> dict[str, Path]:
    src, out = tmp / "src", tmp / "bundles"
    src.mkdir()
    out.mkdir()
    good = tiny_mlp(src / "good.onnx", seed=0, outputs=5)
    stats = {"reference_stats": _drift_stats(good)}
    return {
        "wrong@1": make_bundle(out, key, good, name="wrong", version="1.0.0"),
        "wrong@2": make_bundle(out, key, _final_layer(good, src / "negated.onnx", -1.0), name="wrong",
                               version="2.0.0"),
        "same@1": make_bundle(out, key, good, name="same", version="1.0.0"),
        "same@2": make_bundle(out, key, _final_layer(good, src / "doubled.onnx", 2.0), name="same", version="2.0.0"),
        "shifted@1": make_bundle(out, key, good, name="shifted", version="1.0.0", extra=stats),
        "usual@1": make_bundle(out, key, good, name="usual", version="1.0.0", extra=stats),
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealFleet]:
    tmp = tmp_path_factory.mktemp("quality")
    key = SigningKey.generate()
    bundles = _bundles(tmp, key)
    installed = [bundles[f"{model}@1"] for model in ("wrong", "same", "shifted", "usual")]
    with real_fleet(tmp, key, bundles, agents=1, installed=installed, extra=AGENT) as fleet:
        yield fleet


def _update_events(fleet: RealFleet, model: str, version: str) -> list[dict[str, Any]]:
    return [e["body"] for e in fleet.events(fleet.devices[0])
            if e["kind"] == "update" and (e["body"].get("model"), e["body"].get("version")) == (model, version)]


def test_a_version_that_answers_differently_is_stopped_by_the_shadow_gate_and_one_that_agrees_passes(
        fleet: RealFleet) -> None:
    (cam0,) = fleet.devices
    fleet.wait_installed([cam0], "wrong", "1.0.0")
    # given wrong@2 (the last layer negated: as fast and as error-free as 1.0.0, every top-1 class changed)
    # and same@2 (the last layer doubled: other weights, the same classes), both rolled out with a shadow limit
    gates: dict[str, Any] = {"waves": [100], "min_shadow_agreement": 0.9, "probation_s": 3, "observe_s": 2}
    # when live traffic reaches both models during the agent's probation (a 20 % sample is shadowed)
    with Load(cam0, "wrong", draws(0.0, seed=5), pause_s=0.01) as wrong, \
            Load(cam0, "same", draws(0.0, seed=6), pause_s=0.01) as same:
        bad, good = fleet.rollout("wrong@2.0.0", **gates), fleet.rollout("same@2.0.0", **gates)
        stopped, done = fleet.wait_stopped(bad), fleet.wait_stopped(good)
        wait_for("cam-0 to serve wrong@1.0.0 again", lambda: cam0.serving("wrong") == "1.0.0", 30, fleet.logs)
    # then the device compared 2.0.0's answers with 1.0.0's on the same requests, found them different and
    # rolled back by itself; the rollout stops on that verdict, the figure included
    assert stopped["state"] == "paused", stopped
    assert "rolled back by itself: shadow agreement 0.0% over" in stopped["reason"], stopped["reason"]
    assert "below 90.0%" in stopped["reason"]
    assert wrong.answers["2.0.0"] > 0 and wrong.failures == 0    # 2.0.0 served without a single error
    assert fleet.member(bad, cam0)["state"] == "reverted"   # and the fleet's desired state says 1.0.0 too
    back = _update_events(fleet, "wrong", "2.0.0")
    assert any(b["state"] == "rolling_back" and "shadow agreement" in str(b.get("reason")) for b in back), back
    fleet.wait_installed([cam0], "wrong", "1.0.0")
    # and the control: the same limit, answers that agree, committed and completed
    assert done["state"] == "completed", done["reason"]
    assert same.answers["2.0.0"] > 0 and cam0.serving("same") == "2.0.0"
    assert any(b["state"] == "committed" for b in _update_events(fleet, "same", "2.0.0"))


def test_the_fleet_scores_drift_per_device_and_version_within_a_few_windows_at_two_requests_a_second(
        fleet: RealFleet) -> None:
    (cam0,) = fleet.devices
    models = ("usual", "shifted")
    # given two models with the same reference statistics (inputs around 0), each seeing 2 requests a second:
    # one with inputs like its reference, one with inputs centred on 3
    with Load(cam0, "usual", draws(0.0, seed=7), pause_s=0.5), Load(cam0, "shifted", draws(3.0, seed=8), pause_s=0.5):
        wait_for("drift scores for both models", lambda: _scores(fleet, models), 8 * INTERVAL_S + 10, fleet.logs)
        # then the fleet has a score for that device and version within a few windows of traffic ...
        first = {m: _windows(fleet, m) for m in models}
        assert all(1 <= n <= 3 for n in first.values()), first
        # ... which, after three windows, tells the shifted inputs from the usual ones, on the input tensor
        wait_for("three windows of each", lambda: all(_windows(fleet, m) >= 3 for m in models), 6 * INTERVAL_S + 10,
                 fleet.logs)
        scores = _scores(fleet, models)
    assert scores is not None
    shifted, usual = scores["shifted"]["tensors"]["inputs/x"], scores["usual"]["tensors"]["inputs/x"]
    assert shifted > 1.0 and shifted > 4 * usual, scores
    assert scores["shifted"]["score"] > scores["usual"]["score"]


def _windows(fleet: RealFleet, model: str) -> int:
    """How many telemetry windows with traffic on ``model``@1.0.0 the fleet has from the device."""
    windows = fleet.http.get(f"/v1/telemetry/{fleet.devices[0].device_id}").json()["windows"]
    return sum(1 for w in windows if (w["model"], w["version"]) == (model, "1.0.0") and w["requests"])


def _scores(fleet: RealFleet, models: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
    drift = fleet.http.get(f"/v1/telemetry/{fleet.devices[0].device_id}").json()["drift"]
    found = {d["model"]: d for d in drift if d["model"] in models and d["version"] == "1.0.0"
             and d["score"] is not None}
    return found if len(found) == len(models) else None
