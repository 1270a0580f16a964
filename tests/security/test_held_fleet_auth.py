"""Every state-changing fleet route, sent a *valid* request with each insufficient credential: refused, and
nothing in the database changed — on SQLite and PostgreSQL.

``tests/fleet/test_auth.py`` proves each route answers 401/403 to bad tokens, but with placeholder ids and
empty bodies. An attacker sends a request that would work: a real token id to revoke, a real bundle to
upload, a real device to patch. So this walk reuses the valid requests that
``tests/fleet/test_audit_completeness.py`` builds for every state-changing route, swaps in each credential
the route's guard must refuse, and compares a dump of every table before and after. Then the same request
with the right credential must succeed and change the dump, which proves the request was a real one and
the dump can see the change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from edgeml.fleet.credentials import token_hash
from edgeml.fleet.store.models import ApiToken, Base, EnrollmentToken, Lease, utcnow
from tests.fleet.conftest import Fleet, make_fleet
from tests.fleet.test_audit_completeness import AUDITED, EXEMPT, Call, World, state_changing_routes
from tests.fleet.test_auth import ROUTES
from tests.support.postgres import temporary_database

HEARTBEAT = ("POST", "/v1/device/heartbeat")
# A lease row is renewed by the server's own leader loop, whoever calls; it is not the caller's doing.
NOT_CALLER_STATE = {Lease.__tablename__}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet server in-process (the API over TestClient) on SQLite and on PostgreSQL.

    The rollout controller is off here: its steps move rollouts whoever calls, and the
    walk must see only what the callers did."""
    if request.param == "sqlite":
        yield from make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'fleet.db'}", rollout_controller=False)
    else:
        with temporary_database() as url:
            yield from make_fleet(tmp_path / "data", url, rollout_controller=False)


class Credentials:
    """One credential of every kind an attacker may hold, made through the API (and aged in the database)."""

    def __init__(self, fleet: Fleet) -> None:
        self.valid = {"viewer": fleet.token("viewer"), "deployer": fleet.token("deployer"),
                      "admin": fleet.admin_token, "device": fleet.enroll()["api_token"]}
        expired, revoked = fleet.token("admin", name="expired-admin"), fleet.token("admin", name="revoked-admin")
        revoked_device = fleet.enroll()
        assert fleet.call("POST", f"/v1/devices/{revoked_device['device_id']}/revoke").status_code == 200
        used = fleet.call("POST", "/v1/enrollment-tokens", json={}).json()["token"]
        assert fleet.http.post("/v1/enroll", headers=fleet.auth(used), json={}).status_code == 201
        stale = fleet.call("POST", "/v1/enrollment-tokens", json={}).json()["token"]
        with fleet.server.store.session() as s:
            s.execute(update(ApiToken).where(ApiToken.token_hash == token_hash(expired))
                      .values(expires_at=utcnow() - timedelta(seconds=1)))
            s.execute(update(ApiToken).where(ApiToken.token_hash == token_hash(revoked)).values(revoked_at=utcnow()))
            s.execute(update(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash(stale))
                      .values(expires_at=utcnow() - timedelta(seconds=1)))
        # (case, token or None for no header, the status it must get); the role-based ones are added per guard
        self.always: list[tuple[str, str | None, int]] = [
            ("no token", None, 401), ("bogus token", "efl_" + "x" * 43, 401), ("not a token", "not a token", 401),
            ("expired admin token", expired, 401), ("revoked admin token", revoked, 401),
            ("revoked device's token", revoked_device["api_token"], 401)]
        self.enrolment = [("used enrolment token", used, 401), ("expired enrolment token", stale, 401),
                          ("admin API token", fleet.admin_token, 401), ("device token", self.valid["device"], 401)]

    def insufficient(self, guard: str) -> list[tuple[str, str | None, int]]:
        if guard == "enrollment":
            return self.always[:3] + self.enrolment
        # A read-only guard ("viewer", "any") on a state-changing route is itself the hole: walk it as the
        # strictest guard, so every weaker token that gets through shows up with what it changed.
        weaker = {"deployer": ["viewer", "device"], "device": ["admin", "viewer"]}.get(
            guard, ["viewer", "deployer", "device"])
        return self.always + [(f"{role} token", self.valid[role], 403) for role in weaker]


def _heartbeat(w: World) -> Call:
    return Call("POST", "/v1/device/heartbeat", w.fleet.enroll()["api_token"], {"json": {"installed": {"m": "1"}}})


def _capture_upload(w: World) -> Call:
    from tests.capture.test_fleet_captures import _body

    return Call("PUT", "/v1/captures/cap-auth-walk", w.fleet.enroll()["api_token"],
                {"content": _body("cap-auth-walk")})


BUILDERS: dict[tuple[str, str], Callable[[World], Call]] = {
    **{route: build for route, (build, _) in AUDITED.items()}, HEARTBEAT: _heartbeat,
    ("PUT", "/v1/captures/{capture_id}"): _capture_upload}


def test_the_walk_covers_every_state_changing_route() -> None:
    assert set(BUILDERS) == state_changing_routes() == AUDITED.keys() | EXEMPT.keys()


def _dump(fleet: Fleet) -> dict[str, list[str]]:
    with fleet.server.store.session() as session:
        return {table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
                for table in Base.metadata.sorted_tables if table.name not in NOT_CALLER_STATE}


def _send(fleet: Fleet, call: Call, token: str | None) -> httpx.Response:
    headers = {} if token is None else fleet.auth(token)
    kwargs: dict[str, Any] = dict(call.kwargs)
    return fleet.http.request(call.method, call.path, headers=headers, **kwargs)


def test_insufficient_credentials_change_nothing_on_any_state_changing_route(fleet: Fleet, tmp_path: Path) -> None:
    world, creds = World(fleet, tmp_path), Credentials(fleet)
    guard_of = {(method, path): guard for method, path, guard in ROUTES}
    failures: list[str] = []
    for (method, path), build in sorted(BUILDERS.items()):
        if guard_of[(method, path)] in ("viewer", "any"):
            guard = guard_of[(method, path)]
            failures.append(f"{method} {path}: a read-only guard ({guard}) on a state-changing route")
        # given a request that the right caller could make, and the database as it stands
        call = build(world)
        before = _dump(fleet)
        # when it is sent with each credential its guard must refuse
        for case, token, status in creds.insufficient(guard_of[(method, path)]):
            r = _send(fleet, call, token)
            if r.status_code != status:
                failures.append(f"{method} {path} [{case}]: {r.status_code} (want {status}) {r.text[:120]}")
            # then nothing changed: no row, no audit entry
            after = _dump(fleet)
            if after != before:
                changed = sorted(t for t in before if before[t] != after[t])
                failures.append(f"{method} {path} [{case}]: the database changed ({changed})")
                before = after
        # and the right credential makes the same request succeed, which the dump sees
        right = call.token if call.token is not None else fleet.admin_token
        r = _send(fleet, call, right)
        if not r.is_success:
            failures.append(f"{method} {path} [right token]: {r.status_code} {r.text[:120]}")
        elif _dump(fleet) == before:
            failures.append(f"{method} {path} [right token]: succeeded but the dump saw no change")
    assert failures == []
