"""The agent process: store → registry → HTTP API, plus pluggable components, with a graceful stop.

Components (the telemetry publisher, the update state machine) implement :class:`Component` and get
the running :class:`Agent` in ``start``: from there they reach ``agent.registry`` (``swap``,
``add_observer``), ``agent.store`` (``install``, ``set_current``) and ``agent.load_model``. They are
started after the API is up and stopped before the models are closed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from edgeml.bundle.keys import TrustStore
from edgeml.errors import ConfigError, EdgeMLError
from edgeml.inference import load_verified
from edgeml.runtimes.selection import SelectionPolicy
from edgeml_agent.api import Api
from edgeml_agent.config import AgentConfig
from edgeml_agent.metrics import Metrics
from edgeml_agent.registry import LoadedModel, ModelRegistry
from edgeml_agent.server import AgentHTTPServer
from edgeml_agent.store import Store

log = logging.getLogger("edgeml_agent")


class Component(Protocol):
    name: str

    def start(self, agent: Agent) -> None: ...

    def stop(self) -> None: ...


def trust_from_config(config: AgentConfig) -> TrustStore:
    present = [p for p in config.trusted_keys if p.exists()]
    for p in config.trusted_keys:
        if not p.exists():
            log.warning("trusted key path %s does not exist (trusted_keys in %s)", p, config.source)
    return TrustStore.from_paths(present)


class Agent:
    def __init__(self, config: AgentConfig, components: Iterable[Component] = ()) -> None:
        self.config = config
        self.trust = trust_from_config(config)
        self.store = Store(config.data_dir, self.trust)
        self.registry = ModelRegistry()
        self.metrics = Metrics()
        self.registry.add_observer(self.metrics.observe)
        self.api = Api(self.registry, self.metrics, config.server.api_token, status=self._status)
        self.components = list(components)
        self.server: AgentHTTPServer | None = None
        self.started_at = 0.0
        self._stop = threading.Event()

    # -- models --------------------------------------------------------------------------------------
    def policy(self) -> SelectionPolicy:
        rt = self.config.runtime
        return SelectionPolicy(cpu_fallback=rt.cpu_fallback, allow_other_arch=rt.allow_other_arch,
                               num_threads=rt.num_threads, cache_dir=self.config.data_dir / "engines")

    def load_model(self, name: str, version: str | None = None) -> LoadedModel:
        """Verify, load and smoke-test an installed version (not yet served: pass it to registry.swap)."""
        bundle = self.store.open(name, version)
        model = load_verified(bundle, self.policy())
        try:
            if self.config.runtime.smoke_test:
                model.smoke_test()
            return LoadedModel(model, self.config.model(name))
        except BaseException:
            model.close()
            raise

    def load_all(self) -> None:
        installed = self.store.models()
        for name in sorted(set(self.config.models) - set(installed)):
            log.warning("[models.%s] in %s configures a model that is not installed", name, self.config.source)
        for name in installed:
            try:
                loaded = self.load_model(name)
            except EdgeMLError as exc:
                # One model that cannot run here must not take the others down; /v1/models shows why.
                log.error("model %s cannot be served: %s", name, exc)
                self.registry.mark_failed(name, str(exc))
                continue
            self.registry.swap(name, loaded)
            m = loaded.model
            log.info("serving %s@%s on %s/%s%s", m.name, m.version, m.runtime, m.device,
                     " (CPU fallback)" if m.fallback else "")

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.load_all()
        srv = self.config.server
        try:
            self.server = AgentHTTPServer((srv.host, srv.port), self.api, srv.max_body_bytes)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {srv.host}:{srv.port} ({exc.strerror}); "
                              f"set server.port in {self.config.source} to a free port") from exc
        self.server.start()
        self.started_at = time.time()
        for component in self.components:
            component.start(self)
        log.info("edgeml-agent listening on http://%s:%d", srv.host, self.server.port)

    @property
    def port(self) -> int:
        """The port the API listens on (useful with server.port = 0)."""
        if self.server is None:
            raise RuntimeError("the agent is not started")
        return self.server.port

    def stop(self) -> bool:
        """Drain the API, stop components, close models. True if every accepted request was answered."""
        drained = True
        if self.server is not None:
            drained = self.server.drain(self.config.server.drain_timeout_s)
            log.info("drained: %d request(s) accepted, %d answered", self.server.accepted, self.server.answered)
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.exception("component %s failed to stop", getattr(component, "name", component))
        self.registry.close()
        return drained

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT, then drain and return the exit code (0 after a clean drain)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        self._stop.wait()
        log.info("stopping: draining in-flight requests")
        return 0 if self.stop() else 1

    def _status(self) -> dict[str, Any]:
        return {"uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
                "failed": sorted(self.registry.failures())}

