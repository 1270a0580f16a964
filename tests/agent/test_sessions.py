"""SessionStore on its own: LRU bound, idle expiry (an injected clock), reset on a new model version,
one request at a time per session."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from edgeml.bundle import TensorSpec
from edgeml.bundle.prepost import StatePair
from edgeml.errors import InferenceInputError
from edgeml_agent.sessions import SessionStore


@dataclass
class FakeModel:
    """What a session reads of a Model: name, version, state pairs, inputs, framing."""

    version: str = "1.0.0"
    name: str = "vad"
    state_pairs: list[StatePair] = field(default_factory=lambda: [StatePair("state", "stateN")])
    inputs: list[TensorSpec] = field(default_factory=lambda: [TensorSpec("state", "float32", (2,))])
    framing: None = None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _touch(store: SessionStore, model: FakeModel, sid: str, value: float | None = None) -> np.ndarray | None:
    with store.use(model, sid) as session:  # type: ignore[arg-type]
        kept = session.stream.values.get("state")
        if value is not None:
            session.stream.keep({"stateN": np.full(2, value, np.float32)})
        return kept


def test_least_recently_used_session_is_dropped_beyond_the_bound():
    store, model = SessionStore(max_sessions=2, idle_s=60), FakeModel()
    _touch(store, model, "a", 1.0)
    _touch(store, model, "b", 2.0)
    _touch(store, model, "a")          # 'a' used again: 'b' is now the least recently used
    _touch(store, model, "c", 3.0)

    assert _touch(store, model, "a") is not None
    assert _touch(store, model, "b") is None        # dropped, starts over
    assert store.stats()["evicted"] == 2 and len(store) == 2


def test_idle_sessions_expire():
    clock = Clock()
    store, model = SessionStore(max_sessions=10, idle_s=30, clock=clock), FakeModel()
    _touch(store, model, "old", 1.0)
    clock.now = 20
    _touch(store, model, "young", 2.0)
    clock.now = 40                        # 'old' idle 40 s > 30, 'young' 20 s

    assert store.stats()["active"] == 1 and store.stats()["expired"] == 1
    assert _touch(store, model, "young") is not None
    assert _touch(store, model, "old") is None


def test_a_new_model_version_starts_every_session_over_and_reset_forgets_one():
    store = SessionStore()
    _touch(store, FakeModel("1.0.0"), "s", 5.0)
    assert _touch(store, FakeModel("1.0.0"), "s") is not None
    assert _touch(store, FakeModel("2.0.0"), "s") is None
    _touch(store, FakeModel("2.0.0"), "s", 6.0)
    assert store.reset("vad", "s") and not store.reset("vad", "s")
    assert _touch(store, FakeModel("2.0.0"), "s") is None


def test_bad_session_ids_are_refused():
    store = SessionStore()
    for bad in ("", "x" * 129, "has space", "semi;colon"):
        with pytest.raises(InferenceInputError, match="session id"):
            _touch(store, FakeModel(), bad)


def test_requests_of_one_session_run_one_at_a_time():
    store, model = SessionStore(), FakeModel()
    inside, overlaps = [0], [0]
    lock = threading.Lock()

    def request() -> None:
        with store.use(model, "same"):  # type: ignore[arg-type]
            with lock:
                inside[0] += 1
                overlaps[0] = max(overlaps[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert overlaps[0] == 1
