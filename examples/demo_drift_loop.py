"""The demo's second half: one camera's inputs shift, and the loop brings a better model back to it.

Steps (run by ``fleet_demo.py`` after the v3 rollback):

8. camera-3 (tagged ``dock`` at enrolment) starts seeing night-time crops: darker, lower contrast. Its
   input drift (PSI of ``x`` against v2's reference statistics) rises in ``edgeml-fleet health`` and on
   the dashboard.
9. v2 carries a capture policy with a drift trigger, so camera-3's agent keeps those requests and sends
   them to the fleet; ``edgeml-fleet captures export`` turns them into a dataset.
10. v4 is built from the same network with the exported samples as calibration data: its reference
    statistics (what drift is measured against) and its fidelity figures rest on what the camera sees now.
    No labels are needed for that: the demo's task has no ground truth, so fidelity is v4's agreement with
    the float model on the captured crops (``labels.csv`` is left for a person to fill in for ``--eval``).
11. a rollout gated on drift (``--max-drift``) takes v4 to the ``dock`` tag only; its gate figures show
    camera-3's drift on v4 back under the limit.

The fleet is driven through the ``edgeml-fleet`` CLI here, as an operator or a CI job would.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MODEL_NAME = "ppocr-cls"
INPUT = "x"
SHIFTED_CAMERA = "camera-3"
SHIFTED_TAG = "dock"
DRIFT_TRIGGER = 0.2     # PSI of the input above which an agent keeps a request
MAX_DRIFT = 0.25        # the v4 rollout's drift gate
CAPTURES_WANTED = 32    # 64 crops: every crop the shifted camera cycles through
CAPTURE_POLICY = {"enabled": True, "keep": "both",
                  "triggers": {"drift": {"threshold": DRIFT_TRIGGER, "tensor": INPUT}},
                  "budget": {"samples_per_hour": 3600, "bytes_per_day": 500_000_000}}


class LoopError(RuntimeError):
    """A step of the loop did not happen in time; the message says which."""


class Runner(Protocol):
    work: Path

    def run(self, *args: str, timeout: float = 600) -> str: ...


class FleetApi(Protocol):
    url: str

    def call(self, method: str, path: str, **kwargs: Any) -> Any: ...


def say(text: str) -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


def write_capture_policy(path: Path) -> Path:
    path.write_text(json.dumps(CAPTURE_POLICY, indent=2))
    return path


def night_crops(crops: np.ndarray) -> np.ndarray:
    """The same crops as a camera sees them at night: a third of the contrast, much darker."""
    return np.clip(crops * 0.35 - 0.6, -1.0, 1.0).astype(np.float32)


def input_drift(fleet: FleetApi, device: str, version: str) -> float | None:
    """The fleet's PSI of the device's input ``x`` on ``version`` (None before any sampled window)."""
    for row in fleet.call("GET", f"/v1/telemetry/{device}?minutes=30")["drift"]:
        if row["model"] == MODEL_NAME and row["version"] == version:
            value = (row.get("tensors") or {}).get(f"inputs/{INPUT}")
            return None if value is None else float(value)
    return None


def health_drift(fleet: FleetApi, version: str) -> float | None:
    for h in fleet.call("GET", "/v1/health?minutes=30"):
        if h["model"] == MODEL_NAME and h["version"] == version:
            return None if h["drift"] is None else float(h["drift"])
    return None


def poll(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LoopError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def print_health(demo: Runner) -> None:
    for line in demo.run("edgeml-fleet", "health", "--minutes", "30").rstrip().splitlines():
        say(f"    | {line}")


def shift_and_watch(demo: Runner, fleet: FleetApi, device: str, shift: Any) -> dict[str, Any]:
    step(f"8. {SHIFTED_CAMERA} starts seeing night-time crops; its input drift rises")
    before, health_before = input_drift(fleet, device, "2.0.0"), health_drift(fleet, "2.0.0")
    say(f"    {SHIFTED_CAMERA} input drift (PSI of '{INPUT}' vs v2's reference) before: {fmt(before)}; "
        f"v2's fleet drift score (max over devices, inputs and outputs) {fmt(health_before)}")
    shift()
    after = poll(f"{SHIFTED_CAMERA}'s input drift above {DRIFT_TRIGGER}",
                 lambda: (d := input_drift(fleet, device, "2.0.0")) is not None and d > DRIFT_TRIGGER and d, 90)
    say(f"    {SHIFTED_CAMERA} input drift after: {after:.3f}  (the fleet's score folds in every window since v2)")
    return {"before": before, "after": after, "health_v2_before": health_before}


def collect_captures(demo: Runner, fleet: FleetApi, device: str) -> dict[str, Any]:
    step(f"9. v2's capture policy (drift on '{INPUT}' > {DRIFT_TRIGGER}) sends {SHIFTED_CAMERA}'s samples to the fleet")
    poll(f"{CAPTURES_WANTED} drift captures from {SHIFTED_CAMERA}", lambda: len(fleet.call(
        "GET", f"/v1/captures?model={MODEL_NAME}&device={device}&trigger=drift&limit=1000")["captures"])
        >= CAPTURES_WANTED, 120)
    listed = json.loads(demo.run("edgeml-fleet", "captures", "list", "--model", MODEL_NAME, "--limit", "1000",
                                 "--json"))
    rows = listed["captures"] if isinstance(listed, dict) else listed
    by_trigger = Counter(str(r["trigger"]) for r in rows)
    by_device = Counter(str(r["device"]) for r in rows)
    say(f"    captures by trigger: {dict(by_trigger)}; by device: {dict(by_device)}")
    say(f"    {SHIFTED_CAMERA} input drift now {fmt(input_drift(fleet, device, '2.0.0'))}; edgeml-fleet health:")
    print_health(demo)
    dataset = demo.work / "captures-dock"
    demo.run("edgeml-fleet", "captures", "export", "--model", MODEL_NAME, "--device", device, "--trigger", "drift",
             "-o", str(dataset))
    samples = sorted(dataset.glob("*.npz"))
    with open(dataset / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    say(f"    edgeml-fleet captures export -> {dataset.name}/: {len(samples)} samples, labels.csv with "
        f"{len(labels)} rows (the label column is left for a person; v4 needs none)")
    return {"by_trigger": dict(by_trigger), "by_device": dict(by_device), "exported": len(samples),
            "dataset": str(dataset)}


def build_v4(demo: Runner, model: Path, dataset: Path, policy: Path) -> tuple[Path, dict[str, Any]]:
    step("10. build v4: the same network, calibrated on the exported night-time samples")
    out = demo.work / f"{MODEL_NAME}-4.0.0.edgepkg"
    t0 = time.monotonic()
    report = json.loads(demo.run("edgeml", "build", str(model), "-t", "x86-cpu", "-p", "fp32", "--runtime",
                                 "onnxruntime", "-c", str(dataset), "--capture-policy", str(policy), "--name",
                                 MODEL_NAME, "--version", "4.0.0", "--bench-seconds", "0.3", "--json", "-o", str(out)))
    fidelity = _chosen_fidelity(report)
    figures = {k: v for k, v in fidelity.items() if isinstance(v, (int, float, bool))}
    say(f"    v4.0.0: {out.name} ({report['chosen']}, built in {time.monotonic() - t0:.0f} s)")
    say(f"    v4 fidelity on the captured crops: {json.dumps(figures)}")
    return out, fidelity


def _chosen_fidelity(report: dict[str, Any]) -> dict[str, Any]:
    for cand in report.get("candidates") or []:
        if cand.get("status") == "chosen" or f"{cand.get('runtime')}/{cand.get('precision')}" == report.get("chosen"):
            return dict(cand.get("fidelity") or {})
    return {}


def gated_rollout(demo: Runner, fleet: FleetApi, device: str, observe_s: float, probation_s: float) -> dict[str, Any]:
    step(f"11. roll v4 out to tag '{SHIFTED_TAG}' only, gated on drift (--max-drift {MAX_DRIFT})")
    created = json.loads(demo.run(
        "edgeml-fleet", "rollout", "create", f"{MODEL_NAME}@4.0.0", "--select", f"tag={SHIFTED_TAG}",
        "--waves", "100", "--max-error-rate", "0.05", "--max-latency-regression", "5.0", "--max-drift", str(MAX_DRIFT),
        "--min-requests", "5", "--observe", str(observe_s), "--wave-timeout", "120", "--probation", str(probation_s),
        "--on-failure", "abort", "--json"))
    say(f"    rollout {created['id']}: {created['devices']} device(s) selected by tag={SHIFTED_TAG}")
    return dict(created)


def gate_figures(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures each wave was judged on (the rollout's recorded decisions)."""
    out = []
    for d in status.get("decisions") or []:
        if d["action"] in ("rollout.wave_passed", "rollout.wave_failed") or "figures" in d.get("details", {}):
            figures = d["details"].get("figures") or {}
            out.append({"action": d["action"], "new": figures.get("new"), "gates": figures.get("gates")})
    return out


def print_gate_figures(figures: list[dict[str, Any]]) -> None:
    for f in figures:
        new = f["new"] or {}
        say(f"    {f['action']}: drift {fmt(new.get('drift'))} (limit {MAX_DRIFT}), error rate "
            f"{new.get('error_rate')}, requests {new.get('requests')}, devices {new.get('devices')}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
