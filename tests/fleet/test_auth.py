"""Tokens, roles and the rule that every endpoint refuses missing, wrong, expired, revoked and
under-privileged tokens. The table is generated from the app's own route list, so a new endpoint
cannot escape it."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import update

from edgeml.errors import AuthError
from edgeml.fleet.api.meta import PUBLIC_PATHS
from edgeml.fleet.app import api_routes, create_app
from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.context import FleetContext
from edgeml.fleet.credentials import token_hash
from edgeml.fleet.store.models import ApiToken, EnrollmentToken, utcnow

GUARDS = {"require_viewer": "viewer", "require_deployer": "deployer", "require_admin": "admin",
          "require_device": "device", "require_viewer_or_device": "any", "require_enrollment": "enrollment"}
# The token that is valid but not enough for each guard.
UNDER_PRIVILEGED = {"viewer": "device", "deployer": "viewer", "admin": "deployer", "device": "admin"}


def _guards(dependant: Any) -> set[str]:
    found = set()
    for sub in dependant.dependencies:
        name = getattr(sub.call, "__name__", "")
        if name in GUARDS:
            found.add(GUARDS[name])
        found |= _guards(sub)
    return found


def route_table() -> list[tuple[str, str, str]]:
    """(method, path, guard) for every route of the app."""
    app = create_app(cast(FleetContext, None))
    rows = []
    for route in api_routes(app):
        guards = _guards(route.dependant)
        if route.path in PUBLIC_PATHS:
            assert not guards, f"{route.path} is listed public but has a guard"
            continue
        assert len(guards) == 1, f"{route.path} must have exactly one auth guard, has {guards}"
        rows += [(method, route.path, next(iter(guards))) for method in sorted(route.methods or ())]
    return rows


ROUTES = route_table()


def test_every_non_public_route_is_in_the_table() -> None:
    app = create_app(cast(FleetContext, None))
    paths = {r.path for r in api_routes(app)}
    assert paths - {p for _, p, _ in ROUTES} == set(PUBLIC_PATHS)
    assert ("GET", "/openapi.json", "viewer") in ROUTES
    assert len(ROUTES) >= 17


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "does-not-exist", path)


def test_every_endpoint_refuses_bad_tokens(fleet) -> None:
    # given one token of each kind, plus expired and revoked ones
    tokens = {role: fleet.token(role) for role in ("viewer", "deployer")}
    tokens["admin"] = fleet.admin_token
    device = fleet.enroll()
    tokens["device"] = device["api_token"]
    expired, revoked = fleet.token("admin", name="old"), fleet.token("admin", name="gone")
    with fleet.server.store.session() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == token_hash(expired))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
        s.execute(update(ApiToken).where(ApiToken.token_hash == token_hash(revoked)).values(revoked_at=utcnow()))
    r = fleet.call("POST", "/v1/enrollment-tokens", json={})
    used_enroll = r.json()["token"]
    assert fleet.http.post("/v1/enroll", headers=fleet.auth(used_enroll), json={}).status_code == 201
    r = fleet.call("POST", "/v1/enrollment-tokens", json={})
    expired_enroll = r.json()["token"]
    with fleet.server.store.session() as s:
        s.execute(update(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash(expired_enroll))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))

    failures = []

    def expect(method: str, path: str, headers: dict[str, str], statuses: set[int], case: str) -> None:
        body = {} if method in ("POST", "PATCH") else None
        r = fleet.http.request(method, _concrete(path), headers=headers, json=body)
        if r.status_code not in statuses:
            failures.append(f"{method} {path} [{case}]: {r.status_code} {r.text[:120]}")
        elif r.status_code == 401 and r.headers.get("www-authenticate") != "Bearer":
            failures.append(f"{method} {path} [{case}]: 401 without WWW-Authenticate")

    # when every route is called with each bad credential
    for method, path, guard in ROUTES:
        expect(method, path, {}, {401}, "missing")
        expect(method, path, fleet.auth("efl_" + "x" * 43), {401}, "wrong")
        expect(method, path, fleet.auth("not a token at all"), {401}, "garbage")
        if guard == "enrollment":
            expect(method, path, fleet.auth(used_enroll), {401}, "used enrolment token")
            expect(method, path, fleet.auth(expired_enroll), {401}, "expired enrolment token")
            expect(method, path, fleet.auth(fleet.admin_token), {401}, "API token instead of enrolment token")
            continue
        expect(method, path, fleet.auth(expired), {401}, "expired")
        expect(method, path, fleet.auth(revoked), {401}, "revoked")
        if guard in UNDER_PRIVILEGED:
            expect(method, path, fleet.auth(tokens[UNDER_PRIVILEGED[guard]]), {403}, "under-privileged")
        # and the right token gets past the guard (so the table's roles are real)
        enough = tokens["viewer" if guard == "any" else guard]
        r = fleet.http.request(method, _concrete(path), headers=fleet.auth(enough),
                               json={} if method in ("POST", "PATCH") else None)
        if r.status_code in (401, 403):
            failures.append(f"{method} {path}: the '{guard}' token was refused: {r.status_code} {r.text[:120]}")

    # then every one of them was refused the right way
    assert failures == []


def test_revoked_device_token_fails_even_for_device_routes(fleet) -> None:
    device = fleet.enroll()
    assert fleet.call("POST", "/v1/device/heartbeat", device["api_token"], json={}).status_code == 200
    assert fleet.call("POST", f"/v1/devices/{device['device_id']}/revoke").status_code == 200
    r = fleet.call("POST", "/v1/device/heartbeat", device["api_token"], json={})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_tokens_create_list_revoke_and_hashed_at_rest(fleet) -> None:
    r = fleet.call("POST", "/v1/tokens", json={"name": "ci", "role": "deployer", "expires_in_s": 3600})
    assert r.status_code == 201
    created = r.json()
    secret = created["token"]
    assert secret.startswith("efl_") and len(secret) > 40
    assert created["expires_at"] is not None
    assert fleet.call("GET", "/v1/whoami", secret).json() == {
        "token_id": created["id"], "name": "ci", "role": "deployer", "device_id": None}
    # the secret itself is nowhere in the database, only its sha256
    with fleet.server.store.session() as s:
        row = s.get(ApiToken, created["id"])
        assert row is not None and row.token_hash == token_hash(secret) and secret not in row.token_hash
    listed = fleet.call("GET", "/v1/tokens").json()
    assert {t["name"] for t in listed} == {"admin", "ci"} and all("token" not in t for t in listed)
    assert fleet.call("DELETE", f"/v1/tokens/{created['id']}").json()["revoked_at"] is not None
    assert fleet.call("GET", "/v1/whoami", secret).status_code == 401
    assert fleet.call("DELETE", "/v1/tokens/tok_nope").status_code == 404


def test_expired_token_is_refused_with_its_expiry(fleet) -> None:
    token = fleet.token("viewer", expires_in_s=1)
    with fleet.server.store.session() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == token_hash(token))
                  .values(expires_at=utcnow() - timedelta(seconds=5)))
    r = fleet.call("GET", "/v1/whoami", token)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


@pytest.mark.parametrize("body", [{"name": "x", "role": "root"}, {"name": "", "role": "viewer"},
                                  {"name": "x", "role": "viewer", "expires_in_s": 0}])
def test_bad_token_requests_are_422(sqlite_fleet, body) -> None:
    assert sqlite_fleet.call("POST", "/v1/tokens", json=body).status_code == 422


def test_admin_init_refuses_a_second_admin(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    first = create_first_admin(url)
    assert first.startswith("efl_")
    with pytest.raises(AuthError, match="already exists"):
        create_first_admin(url)


def test_healthz_is_public_and_says_nothing_else(sqlite_fleet) -> None:
    r = sqlite_fleet.http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
