"""The agent process: services (store → registry → loader) → HTTP API, plus components, with a graceful stop.

The agent builds one :class:`~edgeml_agent.services.Services` and hands it to the component factory
(:func:`edgeml_agent.components.build_components` in production): each component receives its
collaborators in its constructor and needs nothing from the agent afterwards. Components are
started after the API is up and stopped before the models are closed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence

from edgeml.errors import ConfigError, EdgeMLError
from edgeml.jsontypes import JSON
from edgeml_agent.api import Api
from edgeml_agent.config import AgentConfig
from edgeml_agent.server import AgentHTTPServer
from edgeml_agent.services import Component, Services, StateHook, trust_from_config
from edgeml_agent.sessions import SessionStore
from edgeml_agent.transport import HttpClient

__all__ = ["Agent", "Component", "ComponentFactory", "trust_from_config"]

log = logging.getLogger("edgeml_agent")

ComponentFactory = Callable[[Services], Sequence[Component]]


def no_components(services: Services) -> Sequence[Component]:
    return ()


class Agent:
    def __init__(self, config: AgentConfig, components: ComponentFactory = no_components, *,
                 http: HttpClient | None = None, on_state: StateHook | None = None) -> None:
        self.config = config
        self.services = Services.build(config, http=http, on_state=on_state)
        self.trust, self.store, self.registry = self.services.trust.bundles, self.services.store, self.services.registry
        self.metrics, self.load_model = self.services.metrics, self.services.load_model
        self.api = Api(self.registry, self.metrics, config.server.api_token, status=self._status,
                       sessions=SessionStore(config.server.max_sessions, config.server.session_idle_s))
        self.components = list(components(self.services))
        self.server: AgentHTTPServer | None = None
        self.started_at = 0.0
        self._stop = threading.Event()

    # -- models ---------------------------------------------------------------------------------------
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
            component.start()
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
                log.exception("component %s failed to stop", component.name)
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

    def _status(self) -> dict[str, JSON]:
        return {"uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
                "failed": sorted(self.registry.failures())}

