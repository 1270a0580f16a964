"""The in-process Agent: components plug in, see the registry, and can hot-swap a model under load."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

from edgeml_agent.config import parse_config
from edgeml_agent.daemon import Agent
from edgeml_agent.registry import Observation
from edgeml_agent.services import Services
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


class Recorder:
    """A component like the telemetry publisher or the update state machine: handed the services."""

    name = "recorder"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.events: list[str] = []
        self.observations: list[Observation] = []

    def start(self) -> None:
        self.events.append(f"start {self.services.registry.names()}")
        self.services.registry.add_observer(self.observations.append)

    def stop(self) -> None:
        self.events.append("stop")


def test_components_observe_requests_and_a_swap_never_fails_one(tmp_path, signing_key):
    (tmp_path / "k.pub").write_bytes(signing_key.public_pem())
    config = parse_config({"data_dir": str(tmp_path / "data"), "trusted_keys": [str(tmp_path / "k.pub")],
                           "server": {"port": 0}, "models": {"ghost": {"max_batch_size": 2}}})
    model_file = tiny_mlp(tmp_path / "m.onnx")
    recorders: list[Recorder] = []

    def components(services: Services) -> list[Recorder]:
        recorders.append(Recorder(services))
        return recorders

    agent = Agent(config, components=components)
    recorder = recorders[0]
    assert recorder.services is agent.services   # handed in by the agent, not looked up
    agent.store.install(make_bundle(tmp_path, signing_key, model_file, name="mlp", version="1.0.0"))
    agent.start()
    try:
        assert recorder.events == ["start ['mlp']"]
        url = f"http://127.0.0.1:{agent.port}/v1/models/mlp/infer"
        versions: list[str] = []
        failures: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(url, json={"inputs": [[1, 2, 3, 4]]})
                    if r.status_code == 200:
                        versions.append(r.json()["version"])
                    else:
                        failures.append(r.status_code)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        while versions.count("1.0.0") < 5:
            time.sleep(0.01)
        # what the update state machine will do: install, load, smoke-test, swap, switch the pointer
        agent.store.install(make_bundle(tmp_path, signing_key, model_file, name="mlp", version="1.1.0"),
                            activate=False)
        new = agent.load_model("mlp", "1.1.0")
        agent.registry.swap("mlp", new)
        agent.store.set_current("mlp", "1.1.0")
        while versions.count("1.1.0") < 5:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert "1.0.0" in versions and versions[-1] == "1.1.0"
        assert {o.version for o in recorder.observations} >= {"1.0.0", "1.1.0"}
        assert all(o.status == 200 and o.inputs is not None and o.outputs is not None
                   for o in recorder.observations)
        first = recorder.observations[0].outputs
        assert first is not None and np.asarray(first["y"]).shape == (1, 3)
    finally:
        assert agent.stop() is True
    assert recorder.events[-1] == "stop"
