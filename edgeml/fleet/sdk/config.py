"""Where the client finds its fleet: arguments first, then EDGEML_FLEET_URL / EDGEML_FLEET_TOKEN, then the
file ``edgeml-fleet login`` writes (``$EDGEML_HOME/fleet-cli.json`` or EDGEML_FLEET_CONFIG), 0600."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.errors import ConfigError
from edgeml.fileio import write_atomic
from edgeml.paths import edgeml_home


def config_path() -> Path:
    env = os.environ.get("EDGEML_FLEET_CONFIG")
    return Path(env).expanduser() if env else edgeml_home() / "fleet-cli.json"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; run 'edgeml-fleet login URL --token T' again") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; run 'edgeml-fleet login URL --token T' again")
    return data


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str

    def save(self, path: Path | None = None) -> Path:
        path = path or config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps({"url": self.url, "token": self.token}), mode=0o600)

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        """From the config file, overridden by EDGEML_FLEET_URL / EDGEML_FLEET_TOKEN."""
        return cls.resolve(path=path)

    @classmethod
    def resolve(cls, url: str | None = None, token: str | None = None, *, path: Path | None = None) -> ClientConfig:
        """``url``/``token`` when given; else the environment; else the config file (read only when needed)."""
        url = url or os.environ.get("EDGEML_FLEET_URL")
        token = token or os.environ.get("EDGEML_FLEET_TOKEN")
        path = path or config_path()
        if not url or not token:
            data = _read(path)
            url, token = url or data.get("url"), token or data.get("token")
        if not url or not token:
            missing = " and ".join(n for n, v in (("a server URL", url), ("a token", token)) if not v)
            raise ConfigError(f"no fleet server configured ({missing} missing; {path} does not say): pass url= and "
                              "token=, set EDGEML_FLEET_URL and EDGEML_FLEET_TOKEN, or run "
                              "'edgeml-fleet login URL --token T'")
        return cls(str(url), str(token))
