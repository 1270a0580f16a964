"""Each fidelity-gate metric, on its own, fails a real ``edgeml build`` (CLI process): exit 1, no bundle,
and the error names the metric with the measured number and the threshold it missed.

The case: scikit-learn's digits classifier calibrated on images at a fifth of their brightness (a
preprocessing mismatch), so INT8 scales are far too small and the quantized model really degrades.
The numbers in each error are checked against the report of the same build with every gate off.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.compiler.cli_build import child_env, edgeml_build
from tests.compiler.realdata import digits_classifier

ALL_GATES_OFF = ("--min-agreement", "0", "--min-cosine", "-1", "--max-drop", "1")
EVAL_SAMPLES = 120


@pytest.fixture(scope="module")
def dark_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, ...]]:
    root = tmp_path_factory.mktemp("digits")
    model, x_cal, x_test, y_test, _ = digits_classifier(root / "digits.onnx")
    np.save(root / "dark.npy", x_cal * 0.2)
    np.save(root / "test.npy", x_test[:EVAL_SAMPLES])
    np.save(root / "labels.npy", y_test[:EVAL_SAMPLES])
    data = ("-c", str(root / "dark.npy"), "--eval", str(root / "test.npy"), "--labels", str(root / "labels.npy"))
    return model, ("-t", "x86-cpu", "-p", "int8", "--runtime", "onnxruntime", *data)


@pytest.fixture(scope="module")
def measured(dark_digits: tuple[Path, tuple[str, ...]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fidelity of the same INT8 build with every gate off (it passes and reports its numbers)."""
    model, flags = dark_digits
    # module scope runs before the per-test isolation (tests/conftest.py): its own home, key and cache
    home = tmp_path_factory.mktemp("home")
    env = child_env(EDGEML_HOME=str(home), EDGEML_CACHE_DIR=str(home / "cache"))
    subprocess.run([sys.executable, "-m", "edgeml.cli", "keys", "generate"], env=env, check=True, capture_output=True)
    run = edgeml_build(model, *flags, *ALL_GATES_OFF, "-o", str(home / "off.edgepkg"), env=env)
    fidelity = run.report["candidates"][0]["fidelity"]
    assert fidelity["passed"] and fidelity["failures"] == []
    assert isinstance(fidelity, dict)
    return fidelity


def _expected(fid: dict[str, Any], gate: str) -> str:
    probs = fid["outputs"]["probabilities"]
    return {
        "agreement": f"output 'label': agreement {fid['outputs']['label']['agreement']:.4f} (needs >= 0.97)",
        "cosine": f"output 'probabilities': cosine {probs['cosine']:.4f} (needs >= 0.98)",
        "snr": f"output 'probabilities': snr_db {probs['snr_db']:.4f} (needs >= 20.0)",
        "accuracy": (f"accuracy {fid['accuracy']:.4f} vs reference {fid['reference_accuracy']:.4f}: "
                     f"drop {fid['accuracy_drop']:.4f} (needs <= 0.02)"),
    }[gate]


@pytest.mark.parametrize(("gate", "flags"), [
    ("agreement", ("--min-agreement", "0.97")),
    ("cosine", ("--min-cosine", "0.98")),
    ("snr", ("--min-snr-db", "20")),
    ("accuracy", ("--max-drop", "0.02")),
])
def test_one_gate_fails_the_build_with_its_metric_and_numbers(dark_digits, measured, gate, flags, default_key,
                                                             tmp_path) -> None:
    model, common = dark_digits
    out = tmp_path / "gated.edgepkg"
    run = edgeml_build(model, *common, *ALL_GATES_OFF, *flags, "-o", str(out))   # the later flag wins
    assert run.returncode == 1, run.stderr[-2000:]
    assert not out.exists()
    assert "no candidate for x86-cpu passed the fidelity gate" in run.stderr
    failed = re.search(r"onnxruntime/int8: failed: (.*)", run.stderr)
    assert failed is not None, run.stderr[-2000:]
    # only this gate was on: every failure listed is this metric's, with the numbers of the gate-off build
    assert failed.group(1).split("; ")[0] == _expected(measured, gate)
    other_metrics = {"agreement", "cosine", "snr_db", "accuracy"} - {"snr_db" if gate == "snr" else gate}
    assert not any(f" {m} " in failed.group(1) for m in other_metrics), failed.group(1)
