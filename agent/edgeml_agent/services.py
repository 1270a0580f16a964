"""What the agent's components are handed when they are built: one typed object, no lookups by name.

:class:`Services` holds the pieces every component may use (config, trust, store, model registry,
metrics, model loader, credentials, the outgoing-HTTP client) plus the one hook tests use to stop an
update inside a state (``on_state``, a no-op in production). Components that need each other
(updates report through telemetry and receive desired states over its MQTT connection) are given
each other by :func:`edgeml_agent.components.build_components`, typed by the small protocols below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from edgeml.bundle.keys import TrustStore
from edgeml.inference import load_verified
from edgeml.jsontypes import JSON
from edgeml.protocol import UpdateState
from edgeml.runtimes.selection import SelectionPolicy
from edgeml_agent.config import AgentConfig
from edgeml_agent.enroll import Credentials, enrolled
from edgeml_agent.metrics import Metrics
from edgeml_agent.registry import LoadedModel, ModelRegistry
from edgeml_agent.store import Store
from edgeml_agent.transport import HttpClient, HttpxClient
from edgeml_agent.trust import DeviceTrust, fleet_key_ids

log = logging.getLogger("edgeml_agent")

# on_state(state, point): called by the update machine at fixed points — "enter" as a state's side
# effect begins, "mid" between the pointer switch and the registry swap, "bytes=<have>/<total>" after
# each downloaded chunk reached the file. Production passes a no-op; crash tests stop the process there.
StateHook = Callable[[UpdateState, str], None]


def no_hook(state: UpdateState, point: str) -> None:
    """The production ``on_state``: nothing."""


class EventSink(Protocol):
    def event(self, kind: str, **data: JSON) -> None:
        """Report an event (model loaded, update progress, ...) to whoever listens (the fleet)."""


class DesiredFeed(Protocol):
    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Call ``callback`` with each message on ``topic`` (the device's desired-state topic)."""


class Component(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class NoEvents:
    """The event sink of a component built without telemetry: the events are only in the log (the
    update machine logs each report itself)."""

    def event(self, kind: str, **data: JSON) -> None:
        pass


def device_trust(config: AgentConfig, http: HttpClient | None = None) -> DeviceTrust:
    """The device's fleet key and bundle signers, kept apart (:mod:`edgeml_agent.trust`)."""
    for p in config.trusted_keys:
        if not p.exists():
            log.warning("trusted key path %s does not exist (trusted_keys in %s)", p, config.source)
    creds = enrolled(config.data_dir)
    ask = None if creds is None else partial(fleet_key_ids, http or HttpxClient(), creds["server"], creds["api_token"])
    return DeviceTrust(config.data_dir, config.trusted_keys, ask_fleet=ask)


def trust_from_config(config: AgentConfig) -> TrustStore:
    """The bundle signers this device accepts (never its fleet key, never a revoked key)."""
    return device_trust(config).bundles


class ModelLoader:
    """Verify, load and smoke-test an installed version (not yet served: pass it to registry.swap)."""

    def __init__(self, config: AgentConfig, store: Store) -> None:
        self.config, self.store = config, store

    def policy(self, num_threads: int | None = None) -> SelectionPolicy:
        rt = self.config.runtime
        return SelectionPolicy(cpu_fallback=rt.cpu_fallback, allow_other_arch=rt.allow_other_arch,
                               num_threads=rt.num_threads if num_threads is None else num_threads,
                               allow_spinning=rt.allow_spinning,
                               cache_dir=self.config.data_dir / "engines")

    def __call__(self, name: str, version: str | None = None, *, num_threads: int | None = None) -> LoadedModel:
        """``num_threads`` overrides the configured CPU threads (the probation shadow runs on one)."""
        bundle = self.store.open(name, version)
        model = load_verified(bundle, self.policy(num_threads))
        try:
            if self.config.runtime.smoke_test:
                model.smoke_test()
            return LoadedModel(model, self.config.model(name))
        except BaseException:
            model.close()
            raise


@dataclass(frozen=True)
class Services:
    config: AgentConfig
    trust: DeviceTrust        # .fleet checks desired states, .bundles checks bundles: never mixed
    store: Store
    registry: ModelRegistry
    metrics: Metrics
    load_model: ModelLoader
    credentials: Credentials | None
    http: HttpClient = field(default_factory=HttpxClient)
    on_state: StateHook = no_hook

    @classmethod
    def build(cls, config: AgentConfig, *, http: HttpClient | None = None,
              on_state: StateHook | None = None) -> Services:
        http = http or HttpxClient()
        trust = device_trust(config, http)
        store = Store(config.data_dir, trust.bundles)
        registry = ModelRegistry()
        metrics = Metrics()
        registry.add_observer(metrics.observe)
        return cls(config=config, trust=trust, store=store, registry=registry, metrics=metrics,
                   load_model=ModelLoader(config, store), credentials=enrolled(config.data_dir),
                   http=http, on_state=on_state or no_hook)
