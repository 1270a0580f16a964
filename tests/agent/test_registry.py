"""ModelRegistry: swap never breaks an in-flight request; observers see every request."""

from __future__ import annotations

import numpy as np
import pytest

import edgeml
from edgeml_agent.config import ModelConfig
from edgeml_agent.registry import LoadedModel, ModelRegistry, Observation, UnknownModelError
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


@pytest.fixture
def load(tmp_path, signing_key, trust):
    model_file = tiny_mlp(tmp_path / "m.onnx")

    def _load(version: str, config: ModelConfig | None = None) -> LoadedModel:
        bundle = make_bundle(tmp_path, signing_key, model_file, name="mlp", version=version)
        return LoadedModel(edgeml.load(bundle, trust), config)

    return _load


def test_swap_keeps_the_old_model_until_its_requests_finish(load):
    registry = ModelRegistry()
    old, new = load("1.0.0"), load("1.1.0")
    registry.swap("mlp", old)
    x = {"x": np.ones((1, 4), np.float32)}
    with registry.acquire("mlp") as in_flight:
        assert registry.swap("mlp", new) is old
        assert in_flight is old and hasattr(old.model.backend, "session")      # still open
        assert in_flight.infer(x)["y"].shape == (1, 3)                          # and still runs
        assert registry.get("mlp") is new
    assert not hasattr(old.model.backend, "session")                            # closed after release
    with registry.acquire("mlp") as current:
        assert current.version == "1.1.0"
    registry.close()


def test_unknown_model_lists_what_is_loaded(load):
    registry = ModelRegistry()
    registry.add("mlp", load("1.0.0"))
    with pytest.raises(UnknownModelError, match=r"'nope' is not loaded \(loaded: mlp\)"), registry.acquire("nope"):
        pass
    registry.mark_failed("jetson", "no backend")
    assert registry.failures() == {"jetson": "no backend"} and registry.names() == ["mlp"]
    registry.remove("mlp")
    assert registry.names() == []


def test_observers_get_each_observation_and_a_broken_one_does_not_stop_the_rest():
    registry = ModelRegistry()
    seen: list[Observation] = []

    def broken(obs: Observation) -> None:
        raise ValueError("observer bug")

    registry.add_observer(broken)
    registry.add_observer(seen.append)
    obs = Observation("mlp", "1.0.0", 0.001, 200)
    registry.notify(obs)
    assert seen == [obs]
    registry.remove_observer(seen.append)
    registry.notify(obs)
    assert len(seen) == 1


def test_batched_model_runs_through_its_batcher(load):
    loaded = load("1.0.0", ModelConfig(max_batch_size=4, max_wait_ms=1))
    assert loaded.batcher is not None
    out = loaded.infer({"x": np.ones((2, 4), np.float32)})
    assert out["y"].shape == (2, 3) and loaded.batcher.rows == 2
    assert loaded.describe()["batching"] == {"max_batch_size": 4, "max_wait_ms": 1}
    loaded.retire()
