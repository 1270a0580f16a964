"""The agent's configuration: one TOML file, validated; unknown keys and bad values name the key.

Each optional component owns the parser of its own table, defined beside it
(:mod:`edgeml_agent.telemetry.settings`, :mod:`edgeml_agent.updates.settings`); :func:`parse_config`
calls each one explicitly, so the file stays one document with one validation pass, the result is
fully typed, and nothing depends on which modules happen to have been imported.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.errors import ConfigError
from edgeml.tomlsection import TomlSection
from edgeml_agent.telemetry.settings import TelemetryConfig, parse_telemetry
from edgeml_agent.updates.settings import UpdatesConfig, parse_updates

__all__ = ["DEFAULT_PORT", "AgentConfig", "ModelConfig", "RuntimeConfig", "ServerConfig",
           "load_config", "parse_config"]

DEFAULT_PORT = 8470


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_token: str | None = None
    max_body_bytes: int = 16 << 20
    drain_timeout_s: float = 30.0
    max_sessions: int = 1000              # stateful models: client sessions kept at once (LRU beyond)
    session_idle_s: float = 600.0         # a session unused this long is forgotten


# The runtime's intra-op threads per model, and whether ORT's pool threads spin while waiting for work.
# A device runs the agent beside its caller (and a camera pipeline): with ORT's default (a thread per
# core, spinning) they fight the caller for the same cores. Measured with a client on the same 2 cores
# (scripts/bench_agent.py --colocated, figures in docs/agent.md): one thread, no spinning, was the best
# setting or within noise of it for a tiny and a real model; concurrent requests still use every core,
# each on its own thread. ``num_threads = 0`` in the config asks for the runtime's own default.
DEFAULT_NUM_THREADS = 1
DEFAULT_ALLOW_SPINNING: bool | None = False


@dataclass(frozen=True)
class RuntimeConfig:
    num_threads: int = DEFAULT_NUM_THREADS
    allow_spinning: bool | None = DEFAULT_ALLOW_SPINNING
    cpu_fallback: bool | None = None      # None: follow each bundle's target profile
    allow_other_arch: bool = False
    smoke_test: bool = True               # run each bundle's smoke sample when it is loaded


@dataclass(frozen=True)
class ModelConfig:
    max_batch_size: int = 1               # > 1 turns on micro-batching for this model
    max_wait_ms: float = 2.0


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    trusted_keys: tuple[Path, ...]
    server: ServerConfig = ServerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    source: str = "<defaults>"

    def model(self, name: str) -> ModelConfig:
        return self.models.get(name, ModelConfig())


_TOP = {"data_dir", "trusted_keys", "server", "runtime", "models", "telemetry", "updates"}


def parse_config(data: Mapping[str, object], source: str = "<config>", base_dir: Path | None = None) -> AgentConfig:
    root = TomlSection(source, data, ConfigError)
    root.only(_TOP)
    base = base_dir or Path.cwd()
    data_dir_value = root.get("data_dir", str, None)
    if not data_dir_value:
        raise root.fail("data_dir", "is required (the directory where installed bundles live)")
    data_dir = (base / Path(data_dir_value).expanduser()).resolve()
    keys = root.strings("trusted_keys", what="a path (a .pub file or a directory)") if "trusted_keys" in root.data \
        else (str(data_dir / "trusted"),)
    for i, k in enumerate(keys):
        if not k:
            raise root.fail(f"trusted_keys[{i}]", f"must be a path (a .pub file or a directory), not {k!r}")
    return AgentConfig(
        data_dir=data_dir,
        trusted_keys=tuple((base / Path(k).expanduser()).resolve() for k in keys),
        server=_server(root.table("server")),
        runtime=_runtime(root.table("runtime")),
        models=_models(root.table("models")),
        telemetry=parse_telemetry(root.table("telemetry")),
        updates=parse_updates(root.table("updates")),
        source=source,
    )


def _server(s: TomlSection[ConfigError]) -> ServerConfig:
    s.only({"host", "port", "api_token", "max_body_bytes", "drain_timeout_s", "max_sessions", "session_idle_s"})
    token = s.get("api_token", str, None)
    if token is not None and len(token) < 16:
        raise s.fail("api_token", "must be at least 16 characters (or removed to turn authentication off)")
    return ServerConfig(
        host=s.get("host", str, "127.0.0.1"),
        port=s.integer("port", DEFAULT_PORT, minimum=0, maximum=65535),
        api_token=token,
        max_body_bytes=s.integer("max_body_bytes", 16 << 20, minimum=1024),
        drain_timeout_s=s.number("drain_timeout_s", 30.0, minimum=0),
        max_sessions=s.integer("max_sessions", 1000, minimum=1, maximum=1_000_000),
        session_idle_s=s.number("session_idle_s", 600.0, minimum=1),
    )


def _runtime(s: TomlSection[ConfigError]) -> RuntimeConfig:
    s.only({"num_threads", "allow_spinning", "cpu_fallback", "allow_other_arch", "smoke_test"})
    return RuntimeConfig(
        num_threads=s.integer("num_threads", DEFAULT_NUM_THREADS, minimum=0, maximum=1024),
        allow_spinning=s.get("allow_spinning", bool, DEFAULT_ALLOW_SPINNING),
        cpu_fallback=s.get("cpu_fallback", bool, None),
        allow_other_arch=s.get("allow_other_arch", bool, False),
        smoke_test=s.get("smoke_test", bool, True),
    )


def _models(s: TomlSection[ConfigError]) -> dict[str, ModelConfig]:
    out: dict[str, ModelConfig] = {}
    for name in s.data:
        m = s.table(name)
        m.only({"max_batch_size", "max_wait_ms"})
        out[name] = ModelConfig(
            max_batch_size=m.integer("max_batch_size", 1, minimum=1, maximum=4096),
            max_wait_ms=m.number("max_wait_ms", 2.0, minimum=0, maximum=10_000),
        )
    return out


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    # Relative paths in the file are relative to the file, not to wherever the agent was started.
    return parse_config(data, str(path), base_dir=path.resolve().parent)
