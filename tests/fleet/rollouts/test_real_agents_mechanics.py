"""Rollout mechanics with a real fleet server and real ``edgeml-agent`` daemons.

Two devices in group ``cams`` (cam-0 is wave 1, cam-1 wave 2 of a 50,100 rollout); each test rolls out
its own model. Covered: a bundle whose smoke test fails on the device, a device that enrols while a
rollout runs, ``rollout pause`` / ``resume`` through the real CLI, and a wave whose only device is
offline. The test that stops an agent runs last and starts it again. A wave is judged only on telemetry
of the new version, so the tests that expect a wave to pass keep traffic on its devices.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest

from edgeml.bundle import SigningKey
from tests.fleet.rollouts.real_fleet import Load, RealFleet, real_fleet, wait_for
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MODELS = ("smk", "join", "pr", "off")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("mechanics")
    key = SigningKey.generate()
    v1, v2 = tiny_mlp(tmp / "v1.onnx", seed=0), tiny_mlp(tmp / "v2.onnx", seed=1)
    out = tmp / "bundles"
    out.mkdir()
    found = {f"{m}@1": make_bundle(out, key, v1, name=m, version="1.0.0") for m in MODELS}
    found |= {f"{m}@2": make_bundle(out, key, v2, name=m, version="2.0.0") for m in MODELS if m != "smk"}
    # 2.0.0 of smk is a good model, but its bundle's expected smoke output is not what it computes
    found["smk@2"] = make_bundle(out, key, v2, name="smk", version="2.0.0", smoke_offset=0.5)
    return tmp, key, found


@pytest.fixture(scope="module")
def fleet(bundles: tuple[Path, SigningKey, dict[str, Path]]) -> Iterator[RealFleet]:
    tmp, key, found = bundles
    with real_fleet(tmp, key, found, agents=2, installed=[found[f"{m}@1"] for m in MODELS]) as fleet:
        yield fleet


def test_a_bundle_failing_its_smoke_test_is_refused_and_the_wave_gate_fails(fleet: RealFleet) -> None:
    cam0, cam1 = fleet.devices
    fleet.wait_installed([cam0, cam1], "smk", "1.0.0")
    # given live traffic on cam-0, when smk@2 (its smoke sample does not match) is rolled out
    with Load(cam0, "smk") as load:
        ro = fleet.rollout("smk@2.0.0", waves=[50, 100], min_requests=0)
        stopped = fleet.wait_stopped(ro)
    # then cam-0's agent refused it in smoke_testing and reported that as an update event
    failed = [e["body"] for e in fleet.events(cam0) if e["kind"] == "update" and e["body"].get("model") == "smk"
              and e["body"].get("version") == "2.0.0" and e["body"].get("state") == "failed"]
    assert [b["source"] for b in failed] == ["smoke_testing"], failed
    assert "smoke test output" in failed[0]["reason"]
    # and kept serving 1.0.0 the whole time: no request was answered by 2.0.0 nor failed
    assert set(load.answers) == {"1.0.0"} and load.failures == 0, (load.answers, load.failures)
    assert cam0.serving("smk") == "1.0.0"
    # and the fleet's wave gate failed on that install failure, naming the device, the step and the cause
    assert stopped["state"] == "paused", stopped
    assert f"device {cam0.device_id} refused it in smoke_testing" in stopped["reason"], stopped["reason"]
    assert "smoke test output" in stopped["reason"]
    assert fleet.member(ro, cam0)["state"] == "reverted"
    # and the second wave never started
    assert fleet.member(ro, cam1)["state"] == "pending" and cam1.serving("smk") == "1.0.0"
    assert not fleet.decisions(ro, "rollout.wave_passed")


def test_a_device_enrolled_while_a_rollout_runs_gets_the_version(
        fleet: RealFleet, bundles: tuple[Path, SigningKey, dict[str, Path]]) -> None:
    cam0, cam1 = fleet.devices
    # given a rollout of join@2 over cam-0 and cam-1 (waves 50, 100), with traffic (a wave needs telemetry)
    with ExitStack() as traffic:
        traffic.enter_context(Load(cam0, "join"))
        traffic.enter_context(Load(cam1, "join"))
        ro = fleet.rollout("join@2.0.0", waves=[50, 100], observe_s=4, min_requests=0)
        # (the controller picks the members just after the API answered: cam-2 must come after that)
        wait_for("the rollout's members", lambda: len(fleet.status(ro)["device_list"]) == 2, 30, fleet.logs)
        # when cam-2 enrols into the same group while it runs, and then installs join@1 (the fleet cannot know
        # that version from the enrolment)
        cam2 = fleet.enroll("cam-2", "cams", installed=[bundles[2]["join@1"]])
        traffic.enter_context(Load(cam2, "join"))
        assert fleet.status(ro)["state"] == "running"
        # then it joins the wave then current, installs 2.0.0 there, and the rollout completes over all three
        done = fleet.wait_stopped(ro)
    assert done["state"] == "completed", done
    (joined,) = fleet.decisions(ro, "rollout.devices_joined")
    assert joined["devices"] == [cam2.device_id]
    member = fleet.member(ro, cam2)
    assert member["state"] == "installed" and member["wave"] == joined["wave"]
    # and the fleet knows the version to send it back to, should a later gate fail (its agent said so)
    assert member["previous"] == "1.0.0"
    passed = fleet.decisions(ro, "rollout.wave_passed")
    assert [p["wave"] for p in passed] == [1, 2]
    assert [cam0.serving("join"), cam1.serving("join"), cam2.serving("join")] == ["2.0.0"] * 3
    cam2.agent.stop()   # the later tests use cam-0 and cam-1 only
    fleet.devices.remove(cam2)
    r = fleet.http.post(f"/v1/devices/{cam2.device_id}/revoke")
    assert r.status_code == 200, r.text


def test_pause_and_resume_from_the_cli(fleet: RealFleet) -> None:
    cam0, cam1 = fleet.devices
    observe_s = 6   # room for the CLI to start on a busy machine before wave 1's observation ends
    traffic = ExitStack()   # (a wave needs telemetry of the new version to be judged)
    traffic.enter_context(Load(cam0, "pr"))
    traffic.enter_context(Load(cam1, "pr"))
    ro = fleet.rollout("pr@2.0.0", waves=[50, 100], observe_s=observe_s, min_requests=0)
    fleet.wait_member(ro, cam0, "installed")
    # when an operator pauses it during wave 1's observation
    paused = fleet.cli("rollout", "pause", ro)
    assert paused["state"] == "paused"
    # then no new wave starts: well after wave 1's observation would have ended, cam-1 was sent nothing.
    # (A fixed wait: nothing happening cannot be waited for; it covers the window and three controller ticks.)
    began = fleet.status(ro)["observe_started_at"]
    ends = datetime.fromisoformat(began).timestamp() + observe_s if began else time.time()
    time.sleep(max(0.0, ends - time.time()) + 3)
    status = fleet.status(ro)
    assert (status["state"], status["wave"]) == ("paused", 1), status
    assert not fleet.decisions(ro, "rollout.wave_passed")
    assert fleet.member(ro, cam1)["state"] == "pending" and cam1.serving("pr") == "1.0.0"
    assert cam0.serving("pr") == "2.0.0"     # pausing keeps what the devices have
    # when it is resumed from the CLI, then it continues to completion
    assert fleet.cli("rollout", "resume", ro)["state"] == "running"
    with traffic:
        done = fleet.wait_stopped(ro)
    assert done["state"] == "completed", done
    assert [p["wave"] for p in fleet.decisions(ro, "rollout.wave_passed")] == [1, 2]
    assert cam0.serving("pr") == cam1.serving("pr") == "2.0.0"


def test_a_wave_whose_device_is_offline_times_out_and_pauses(fleet: RealFleet) -> None:
    cam0, cam1 = fleet.devices
    # given cam-0 (the whole of wave 1) is stopped
    cam0.agent.stop()
    # when off@2 is rolled out with a short wave timeout
    ro = fleet.rollout("off@2.0.0", waves=[50, 100], wave_timeout_s=4, observe_s=2, min_requests=0)
    stopped = fleet.wait_stopped(ro, timeout=45)
    # then the wave times out: cam-0 is counted offline and the rollout pauses, as docs/fleet.md says
    assert stopped["state"] == "paused", stopped
    assert "no device of wave 1 installed 2.0.0 within 4 s" in stopped["reason"], stopped["reason"]
    (offline,) = fleet.decisions(ro, "rollout.devices_offline")
    assert offline["devices"] == [cam0.device_id]
    # and wave 2 never started
    assert fleet.member(ro, cam1)["state"] == "pending" and cam1.serving("off") == "1.0.0"
    # when cam-0 comes back, it finds the fleet's rollback document, not the paused rollout's version
    cam0.agent.__enter__()
    # the agent applies the retained MQTT document first, then polls every 2 s and applies each answer
    # before its next poll: after two polls it has certainly acted on its current desired state
    wait_for("cam-0 to poll its desired state twice", lambda: cam0.agent.log().count("/v1/devices/me/desired") >= 2,
             30, fleet.logs)
    assert cam0.serving("off") == "1.0.0"
    assert not [e for e in fleet.events(cam0) if e["kind"] == "update" and e["body"].get("model") == "off"
                and e["body"].get("version") == "2.0.0"]

