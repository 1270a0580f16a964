"""The agent's configuration: one TOML file, validated; unknown keys and bad values name the key.

Components added later (telemetry publisher, update state machine) register the parser of their own
section with :func:`register_section`, so the file stays one document with one validation pass.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeml.errors import ConfigError

DEFAULT_PORT = 8470


class Section:
    """Typed reading of one TOML table; every error names the file and the dotted key."""

    def __init__(self, source: str, data: Mapping[str, Any], prefix: str = "") -> None:
        self.source, self.data, self.prefix = source, data, prefix

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: key '{self.prefix}{key}' {why}")

    def only(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.fail(extra[0], f"is not a known key (allowed: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"must be {'/'.join(k.__name__ for k in kinds)}, not {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {'/'.join(k.__name__ for k in kinds)}, not {type(value).__name__} {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float | None = None,
               integer: bool = False) -> Any:
        value = self.get(key, int if integer else (int, float), default)
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.fail(key, f"must be at least {minimum}{upper}, not {value}")
        return value

    def table(self, key: str) -> Section:
        value = self.get(key, dict, {})
        return Section(self.source, value, f"{self.prefix}{key}.")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_token: str | None = None
    max_body_bytes: int = 16 << 20
    drain_timeout_s: float = 30.0


@dataclass(frozen=True)
class RuntimeConfig:
    num_threads: int = 0
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
    sections: Mapping[str, Any] = field(default_factory=dict)   # registered component sections
    source: str = "<defaults>"

    def model(self, name: str) -> ModelConfig:
        return self.models.get(name, ModelConfig())


SectionParser = Callable[[Section], Any]
_SECTIONS: dict[str, SectionParser] = {}


def register_section(name: str, parser: SectionParser) -> None:
    """Let a component (telemetry, updates) own a ``[name]`` table of the config file."""
    _SECTIONS[name] = parser


_TOP = {"data_dir", "trusted_keys", "server", "runtime", "models"}


def parse_config(data: Mapping[str, Any], source: str = "<config>", base_dir: Path | None = None) -> AgentConfig:
    import edgeml_agent.components  # noqa: F401 - registers the [telemetry] and [updates] sections

    root = Section(source, data)
    root.only(_TOP | set(_SECTIONS))
    base = base_dir or Path.cwd()
    data_dir_value = root.get("data_dir", str, None)
    if not data_dir_value:
        raise root.fail("data_dir", "is required (the directory where installed bundles live)")
    data_dir = (base / Path(data_dir_value).expanduser()).resolve()
    keys = root.get("trusted_keys", list, [str(data_dir / "trusted")])
    for i, k in enumerate(keys):
        if not isinstance(k, str) or not k:
            raise root.fail(f"trusted_keys[{i}]", f"must be a path (a .pub file or a directory), not {k!r}")
    return AgentConfig(
        data_dir=data_dir,
        trusted_keys=tuple((base / Path(k).expanduser()).resolve() for k in keys),
        server=_server(root.table("server")),
        runtime=_runtime(root.table("runtime")),
        models=_models(root.table("models")),
        sections={name: parser(root.table(name)) for name, parser in _SECTIONS.items()},
        source=source,
    )


def _server(s: Section) -> ServerConfig:
    s.only({"host", "port", "api_token", "max_body_bytes", "drain_timeout_s"})
    token = s.get("api_token", str, None)
    if token is not None and len(token) < 16:
        raise s.fail("api_token", "must be at least 16 characters (or removed to turn authentication off)")
    return ServerConfig(
        host=s.get("host", str, "127.0.0.1"),
        port=s.number("port", DEFAULT_PORT, minimum=0, maximum=65535, integer=True),
        api_token=token,
        max_body_bytes=s.number("max_body_bytes", 16 << 20, minimum=1024, integer=True),
        drain_timeout_s=float(s.number("drain_timeout_s", 30.0, minimum=0)),
    )


def _runtime(s: Section) -> RuntimeConfig:
    s.only({"num_threads", "cpu_fallback", "allow_other_arch", "smoke_test"})
    return RuntimeConfig(
        num_threads=s.number("num_threads", 0, minimum=0, maximum=1024, integer=True),
        cpu_fallback=s.get("cpu_fallback", bool, None),
        allow_other_arch=s.get("allow_other_arch", bool, False),
        smoke_test=s.get("smoke_test", bool, True),
    )


def _models(s: Section) -> dict[str, ModelConfig]:
    out = {}
    for name in s.data:
        m = s.table(name)
        m.only({"max_batch_size", "max_wait_ms"})
        out[name] = ModelConfig(
            max_batch_size=m.number("max_batch_size", 1, minimum=1, maximum=4096, integer=True),
            max_wait_ms=float(m.number("max_wait_ms", 2.0, minimum=0, maximum=10_000)),
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
