"""Fixtures for the fleet server tests: a server over SQLite *and* a real PostgreSQL database.

``fleet`` is an in-process server (FastAPI TestClient, no HTTP listener, no broker) with an admin token;
tests that need the broker or a real process start those themselves.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgeml.bundle import SigningKey
from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.server import FleetServer, ServerConfig
from tests.support.postgres import temporary_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        with temporary_database() as url:
            yield url


@dataclass
class Fleet:
    server: FleetServer
    http: TestClient
    admin_token: str

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = kwargs.pop("headers", {})
        headers.update(self.auth(token if token is not None else self.admin_token))
        return self.http.request(method, path, headers=headers, **kwargs)

    def token(self, role: str, *, expires_in_s: int | None = None, name: str | None = None) -> str:
        r = self.call("POST", "/v1/tokens", json={"name": name or f"{role}-user", "role": role,
                                                  "expires_in_s": expires_in_s})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def trust(self, key: SigningKey, name: str = "ci") -> None:
        r = self.call("POST", "/v1/keys", json={"name": name, "public_pem": key.public_pem().decode()})
        assert r.status_code == 201, r.text

    def enroll(self, *, group: str | None = None, tags: list[str] | None = None,
               hardware: dict | None = None) -> dict:
        r = self.call("POST", "/v1/enrollment-tokens", json={"group": group, "tags": tags or []})
        assert r.status_code == 201, r.text
        r = self.http.post("/v1/enroll", headers=self.auth(r.json()["token"]),
                           json={"name": "cam-1", "hardware": hardware or {"arch": "x86_64"},
                                 "installed": {"edgeml": "0.1.0"}})
        assert r.status_code == 201, r.text
        return dict(r.json())


def make_fleet(data_dir: Path, db: str, **config) -> Generator[Fleet, None, None]:
    admin = create_first_admin(db)
    # An external broker address by default: API tests need no broker process (broker tests start real ones).
    config.setdefault("broker", "mqtt://127.0.0.1:18830")
    server = FleetServer(ServerConfig(data_dir=data_dir, db=db, **config))
    server.start()
    try:
        with TestClient(server.app()) as http:
            yield Fleet(server, http, admin)
    finally:
        server.stop()


@pytest.fixture
def fleet(tmp_path: Path, db_url: str) -> Iterator[Fleet]:
    yield from make_fleet(tmp_path / "data", db_url)


@pytest.fixture
def sqlite_fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'fleet.db'}")
