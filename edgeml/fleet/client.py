"""The HTTP client behind the ``edgeml-fleet`` CLI: server URL + token from a config file, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgeml.errors import AuthError, ConfigError, FleetError
from edgeml.fileio import write_atomic
from edgeml.paths import edgeml_home


def config_path() -> Path:
    env = os.environ.get("EDGEML_FLEET_CONFIG")
    return Path(env).expanduser() if env else edgeml_home() / "fleet-cli.json"


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
        path = path or config_path()
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {path}: {exc}; run 'edgeml-fleet login URL --token T' again") from exc
        url = os.environ.get("EDGEML_FLEET_URL") or data.get("url")
        token = os.environ.get("EDGEML_FLEET_TOKEN") or data.get("token")
        if not url or not token:
            raise ConfigError(f"no fleet server configured ({path} is missing): run 'edgeml-fleet login URL --token T'")
        return cls(str(url), str(token))


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text.strip() or response.reason_phrase
    return detail if isinstance(detail, str) else json.dumps(detail)


class FleetClient:
    def __init__(self, config: ClientConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self._http = httpx.Client(base_url=config.url.rstrip("/"), timeout=timeout,
                                  headers={"Authorization": f"Bearer {config.token}"})

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise FleetError(f"cannot reach the fleet server at {self.config.url} ({exc}): is it running "
                             "('edgeml-fleet serve') and is the URL right ('edgeml-fleet login')?") from exc
        if response.status_code == 401:
            raise AuthError(f"the fleet server refused the token: {_detail(response)}. "
                            "Log in again with 'edgeml-fleet login URL --token T'")
        if response.status_code == 403:
            raise AuthError(f"not allowed: {_detail(response)}")
        if response.status_code >= 400:
            raise FleetError(f"{method} {path} failed ({response.status_code}): {_detail(response)}")
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def pages(self, path: str, *, limit: int = 500, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list endpoint (``{items, next_cursor}``), one request per page."""
        cursor: str | None = None
        while True:
            page = self.get(path, limit=limit, cursor=cursor, **params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(self, path: str, file: Path) -> Any:
        with open(file, "rb") as f:
            return self.request("POST", path, content=f, headers={"Content-Type": "application/octet-stream"})

    def download(self, path: str, dest: Path) -> str:
        """Stream a GET's body into ``dest`` (through a temporary file and a rename); returns its sha256."""
        digest = hashlib.sha256()
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise FleetError(f"GET {path} failed ({response.status_code}): {_detail(response)}")
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            raise FleetError(f"cannot reach the fleet server at {self.config.url} ({exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return digest.hexdigest()
