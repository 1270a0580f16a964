"""Shadow disagreement during probation reaches the capture component: the probation ``Shadow`` calls the
health watch's hook with the request and the previous model's answer, and a policy with the trigger
keeps that sample (one the previous model agrees with is not kept)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgeml.desired import DesiredState
from edgeml.inference import Model
from edgeml_agent.capture.component import CaptureComponent
from edgeml_agent.config import parse_config
from edgeml_agent.registry import Observation
from edgeml_agent.services import Services
from edgeml_agent.updates.health import HealthWatch, Shadow


class PreviousModel:
    """Answers class 0 for inputs below 0 and class 1 otherwise."""

    def predict(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"y": np.array([[1.0, 0.0]] if float(feeds["x"].mean()) < 0 else [[0.0, 1.0]], np.float32)}


def test_a_disagreement_in_probation_is_captured_an_agreement_is_not(tmp_path: Path) -> None:
    services = Services.build(parse_config({"data_dir": str(tmp_path)}))
    capture = CaptureComponent(services)
    capture.desired_changed(DesiredState("d", 0, 0, 1, (), {}, None, b"", capture={
        "m": {"enabled": True, "triggers": {"shadow_disagreement": True}}}))
    health = HealthWatch()
    health.on_shadow_disagreement.append(capture.shadow_disagreed)
    health.shadow = Shadow(cast(Model, PreviousModel()), "m", "2.0.0", 1.0, on_disagree=health.shadow_disagreed)
    capture.start()
    try:
        new_answer = np.array([[0.1, 0.9]], np.float32)   # the new version says class 1 for both requests
        for value in (-1.0, 1.0):   # the previous model says 0 for the first (disagree), 1 for the second
            health.observe(Observation("m", "2.0.0", 0.001, 200, None, {"x": np.full((1, 4), value, np.float32)},
                                       {"y": new_answer}))
        deadline = time.monotonic() + 10
        while (health.shadow.compared < 2 or capture.captured < 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health.shadow.compared == 2 and health.shadow.agreed == 1
        time.sleep(0.1)
        rows = capture.spool.pending()
        assert [r.trigger for r in rows] == ["shadow_disagreement"]
        with np.load(rows[0].path, allow_pickle=False) as npz:
            assert float(npz["in/x"].mean()) == -1.0
    finally:
        health.shadow.stop()
        capture.stop()


def test_the_agent_wires_capture_to_desired_states_shadow_and_drift(tmp_path: Path) -> None:
    from edgeml_agent.components import build_components
    from edgeml_agent.updates.component import UpdateComponent

    components = build_components(Services.build(parse_config({"data_dir": str(tmp_path)})))
    updates = next(c for c in components if isinstance(c, UpdateComponent))
    capture = next(c for c in components if isinstance(c, CaptureComponent))
    assert updates.desired_listeners == [capture.desired_changed]
    assert updates.health.on_shadow_disagreement == [capture.shadow_disagreed]
    assert capture.drift_source("m", "1.0.0") == {}   # telemetry not started: no figures, no error
    capture.spool.close()
