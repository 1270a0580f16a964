"""The models the agent serves, and the hook API other components plug into.

``ModelRegistry.swap(name, new)`` replaces a model without failing a request: a request holds the
model it started with (``acquire``), and a replaced model is closed only when its last in-flight
request has finished. Observers (metrics, the telemetry publisher, an update's probation watch) get one
:class:`Observation` per inference request, called without any registry lock held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from edgeml.arrays import Array
from edgeml.errors import UnknownModelError
from edgeml.inference import Model
from edgeml.jsontypes import JSON
from edgeml_agent.batching import MicroBatcher, check_batchable
from edgeml_agent.config import ModelConfig

log = logging.getLogger("edgeml_agent.registry")


@dataclass(frozen=True)
class Observation:
    model: str
    version: str
    seconds: float                       # time in the agent for this request (decode → encode)
    status: int                          # HTTP status, or 200/4xx/5xx equivalents in-process
    error: str | None = None             # short error kind ("bad_input", "runtime", ...)
    inputs: Mapping[str, Array] | None = None
    outputs: Mapping[str, Array] | None = None


Observer = Callable[[Observation], None]


class LoadedModel:
    """A :class:`Model` being served: optional micro-batcher, in-flight count, deferred close."""

    def __init__(self, model: Model, config: ModelConfig | None = None) -> None:
        self.model = model
        self.config = config or ModelConfig()
        self.loaded_at = time.time()
        self.batcher: MicroBatcher | None = None
        if self.config.max_batch_size > 1:
            check_batchable(model.name, model.backend.inputs, model.backend.outputs)
            self.batcher = MicroBatcher(model.run_checked, self.config.max_batch_size,
                                        self.config.max_wait_ms / 1000.0, model.name)
        self._inflight = 0
        self._retired = False
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    def infer(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run checked feeds (through the batcher when there is one)."""
        if self.batcher is not None:
            return self.batcher.submit(feeds)
        return self.model.run_checked(feeds)

    def describe(self) -> dict[str, JSON]:
        data = self.model.describe()
        data["batching"] = ({"max_batch_size": self.config.max_batch_size, "max_wait_ms": self.config.max_wait_ms}
                            if self.batcher else None)
        data["discarded_backends"] = list(self.model.selection.discarded)
        data["loaded_at"] = self.loaded_at
        return data

    def _enter(self) -> None:
        with self._lock:
            self._inflight += 1

    def _exit(self) -> None:
        with self._lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        """Close once the requests that are using this model have finished."""
        with self._lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.model.close()


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._failures: dict[str, str] = {}
        self._observers: list[Observer] = []
        self._lock = threading.Lock()

    # -- the served set ------------------------------------------------------------------------------
    def swap(self, name: str, new: LoadedModel) -> LoadedModel | None:
        """Serve ``new`` under ``name`` from now on; the old model finishes its requests, then closes."""
        with self._lock:
            old = self._models.get(name)
            self._models[name] = new
            self._failures.pop(name, None)
        if old is not None and old is not new:
            old.retire()
            log.info("model %s: %s -> %s", name, old.version, new.version)
        return old

    add = swap

    def remove(self, name: str) -> None:
        with self._lock:
            old = self._models.pop(name, None)
        if old is not None:
            old.retire()

    def mark_failed(self, name: str, error: str) -> None:
        """Record that ``name`` could not be loaded (shown in /v1/models)."""
        with self._lock:
            self._failures[name] = error

    def failures(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failures)

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._models.get(name)
            known = sorted(self._models)
        if model is None:
            raise UnknownModelError(f"model '{name}' is not loaded (loaded: {', '.join(known) or 'none'})")
        return model

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def models(self) -> list[LoadedModel]:
        with self._lock:
            return [self._models[n] for n in sorted(self._models)]

    @contextmanager
    def acquire(self, name: str) -> Iterator[LoadedModel]:
        """Use a model for one request; a concurrent swap will not close it under us."""
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                model._enter()
            known = sorted(self._models)
        if model is None:
            raise UnknownModelError(f"model '{name}' is not loaded (loaded: {', '.join(known) or 'none'})")
        try:
            yield model
        finally:
            model._exit()

    def close(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for m in models:
            m.retire()

    # -- observation hooks ---------------------------------------------------------------------------
    def add_observer(self, observer: Observer) -> None:
        with self._lock:
            self._observers = [*self._observers, observer]

    def remove_observer(self, observer: Observer) -> None:
        with self._lock:
            self._observers = [o for o in self._observers if o != observer]  # == matches bound methods

    def notify(self, observation: Observation) -> None:
        for observer in self._observers:  # a copy-on-write list: no lock held while user code runs
            try:
                observer(observation)
            except Exception:  # an observer's bug must not fail the request or the other observers
                log.exception("observer %r failed", observer)
