"""The CI example (examples/ci/) for real: ``release.py`` builds with ``edgeml.compile`` and the fidelity
gate, pushes with :class:`edgeml.fleet.Client`, rolls out to a canary group of a real fleet server with a
real ``edgeml-agent`` in it, and waits for the fleet's gate. A good model is released (exit 0); a model that
fails on the canary's live traffic is stopped by the error-rate gate (exit 2, the gate and its figures in
the message) and the canary is sent back. The workflow YAML parses and calls the script with flags it takes.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeml.bundle.keys import generate_key
from edgeml.fleet import Client
from tests.fleet.rollouts.real_fleet import ONE_ROW, THREE_ROWS, Device, Load, RealFleet, wait_for
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import failing_on_batches

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "ci" / "release.py"
WORKFLOW = ROOT / "examples" / "ci" / "edge-release.yml"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealFleet, Device, Path]]:
    """A fleet server and one agent in group 'canary' running cls@1.0.0; the builder key the fleet trusts."""
    tmp = tmp_path_factory.mktemp("ci")
    key = generate_key("ci", tmp)
    (tmp / "src").mkdir()
    v1 = make_bundle(tmp / "cls-1.edgepkg", key, tiny_mlp(tmp / "src" / "v1.onnx", seed=0), name="cls",
                     version="1.0.0")
    with ExitStack() as stack:
        real = RealFleet(tmp, stack, key, {"cls@1": v1})
        canary = real.enroll("canary-0", "canary", [v1])
        real.wait_installed([canary], "cls", "1.0.0")
        yield real, canary, tmp / "ci.key"


def release(real: RealFleet, key: Path, model: Path, version: str, *extra: str) -> subprocess.Popen[str]:
    calibration = model.with_suffix(".npz")
    np.savez(calibration, x=np.random.default_rng(0).normal(0, 1, (32, 4)).astype(np.float32))
    args = [sys.executable, str(SCRIPT), "--model", str(model), "--target", "x86-cpu", "--name", "cls",
            "--version", version, "--key", str(key), "--calibration", str(calibration), "--precision", "fp32",
            "--runtime", "onnxruntime", "--output", str(model.with_suffix(".edgepkg")), "--group", "canary",
            "--waves", "100", "--observe-s", "2", "--wave-timeout-s", "30", "--probation-s", "1",
            "--min-requests", "5", "--max-latency-regression", "50", "--timeout-s", "60", *extra]
    env = {**os.environ, "EDGEML_FLEET_URL": real.server.url, "EDGEML_FLEET_TOKEN": real.admin,
           "EDGEML_HOME": str(model.parent / "home")}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen[str], real: RealFleet) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"release.py did not end:\n{out}\n{err}\n{real.logs()}") from None
    return process.returncode, out, err


def test_a_good_model_is_built_pushed_and_released_to_the_canary_group(fleet: tuple[RealFleet, Device, Path],
                                                                        tmp_path: Path) -> None:
    real, canary, key = fleet
    # given live traffic on the canary, when CI releases a good 2.0.0
    with Load(canary, "cls", ONE_ROW) as traffic:
        process = release(real, key, tiny_mlp(tmp_path / "good.onnx", seed=1), "2.0.0",
                          "--report", str(tmp_path / "rollout.json"))
        code, out, err = finish(process, real)
    # then the job succeeds: built with the fidelity gate, pushed, every wave passed on real traffic
    assert code == 0, f"{out}\n{err}\n{real.logs()}"
    assert "built " in out and "agreement 1, cosine 1 (gate: >= 0.97" in out and "pushed cls@2.0.0" in out
    assert "wave 1: passed on" in out and "released cls@2.0.0 to group 'canary'" in out
    assert traffic.answers["2.0.0"] > 0 and traffic.failures == 0
    # and the fleet agrees, as the Client reads it (the same typed records the script used)
    with Client(real.server.url, real.admin) as client:
        (done,) = [r for r in client.list_rollouts() if r.bundle == "cls@2.0.0"]
        status = client.get_rollout(done.id)
        assert status.state == "completed" and status.selector == {"group": "canary"}
        (wave,) = status.results
        assert wave.passed and wave.figures["new"]["requests"] >= 5
        assert client.get_bundle("cls@2.0.0").fidelity is not None
        # the rest of what a pipeline reads: health per version, the canary group's devices, the audit log
        health = client.get_version_health("cls", "2.0.0")
        assert health is not None and health.requests > 0 and health.devices == 1
        assert [d.id for d in client.list_devices(group="canary")] == [canary.device_id]
        actions = [e.action for e in client.list_audit(target=done.id)]
        assert actions[0] == "rollout.completed" and "rollout.create" in actions
    assert canary.serving("cls") == "2.0.0"


def test_a_model_failing_on_live_traffic_fails_the_job_naming_the_gate(fleet: tuple[RealFleet, Device, Path],
                                                                       tmp_path: Path) -> None:
    real, canary, key = fleet
    real.wait_installed([canary], "cls", "2.0.0")
    # given 3.0.0 answers single rows (its smoke test, the fidelity gate, the probation traffic) but fails the
    # three-row batches live traffic sends once it is installed
    model = failing_on_batches(tmp_path / "bad.onnx")
    with Load(canary, "cls", ONE_ROW):
        process = release(real, key, model, "3.0.0", "--max-error-rate", "0.05", "--on-failure", "abort")
        with Client(real.server.url, real.admin) as client:
            def installed() -> bool:
                found = [r for r in client.list_rollouts() if r.bundle == "cls@3.0.0"]
                members = client.get_rollout(found[0].id).device_list if found else []
                return any(m["state"] == "installed" for m in members)
            wait_for("the canary to install cls@3.0.0", installed, 45, real.logs)
    with Load(canary, "cls", THREE_ROWS) as failing:
        code, out, err = finish(process, real)
    # then the job fails with exit 2, naming the gate and the figures it was judged on
    assert code == 2, f"{out}\n{err}\n{real.logs()}"
    assert "pushed cls@3.0.0" in out
    assert "the gate failed at wave 1/1: error rate" in err and "exceeds 5.0%" in err, err
    assert "new version: 1 device(s)," in err and " errors (" in err
    assert failing.failures > 0
    # and the fleet's abort sent the canary back to 2.0.0, which answers three rows again
    wait_for("the canary to serve cls@2.0.0 again", lambda: canary.answering("cls", THREE_ROWS) == "2.0.0", 45,
             real.logs)


def test_the_workflow_runs_the_script_with_flags_it_accepts() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key 'on' as True: GitHub's own parser does not, both work
    assert set(workflow.get("on") or workflow[True]) == {"push", "workflow_dispatch"}
    steps = workflow["jobs"]["release"]["steps"]
    (run,) = [s["run"] for s in steps if "release.py" in s.get("run", "")]
    words = shlex.split(run)
    assert words[:2] == ["python", "examples/ci/release.py"]
    # the script's own parser takes every flag the workflow passes (shell variables stand in as values)
    spec = importlib.util.spec_from_file_location("ci_release", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(words[2:])
    assert (args.group, args.waves, args.max_drift, args.min_requests) == ("$CANARY_GROUP", "50,100", 0.2, 200)
    secrets = {s.get("env", {}).get("EDGEML_FLEET_TOKEN") for s in steps}
    assert "${{ secrets.EDGEML_FLEET_TOKEN }}" in secrets
