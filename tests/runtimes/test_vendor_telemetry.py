"""OpenVINO's telemetry stays off: checked in fresh processes with an empty HOME (no consent file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, sys
from openvino_telemetry.main import Telemetry
from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

result = {"no_file": OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.NO_FILE}
early = None
if sys.argv[1] == "early":   # a telemetry object made before edgeml imported OpenVINO
    early = Telemetry(app_name="early", app_version="1", tid="x", backend="ga4", enable_opt_in_dialog=False)
    result["early_consent_before"] = early.consent
if sys.argv[1] != "control":
    from edgeml.runtimes.openvino_backend import import_openvino
    import_openvino()
# What NNCF and OpenVINO's converter do: no dialog, and no consent file counts as consent.
t = Telemetry(app_name="nncf", app_version="1", tid="x", backend="ga4", enable_opt_in_dialog=False)
t.init(app_name="ovc", app_version="1", tid="x", backend="ga4", enable_opt_in_dialog=False)
result["consent"] = t.consent
print(json.dumps(result))
"""


def _run(mode: str, home: Path) -> dict:
    env = {**os.environ, "HOME": str(home), "CI": "", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_edgeml_a_missing_consent_file_means_consent(tmp_path):
    """The control: this is the hole edgeml closes (no environment variable turns it off)."""
    result = _run("control", tmp_path)
    assert result == {"no_file": True, "consent": True}
    assert (tmp_path / "intel" / "openvino_ga_cid").exists()   # it starts writing tracking ids


def test_edgeml_declines_openvino_telemetry_and_writes_nothing(tmp_path):
    result = _run("edgeml", tmp_path)
    assert result == {"no_file": True, "consent": False}
    assert not (tmp_path / "intel").exists()


def test_an_instance_created_before_edgeml_goes_quiet(tmp_path):
    result = _run("early", tmp_path)
    assert result["early_consent_before"] is True and result["consent"] is False
