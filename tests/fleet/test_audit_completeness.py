"""Every state-changing route of the fleet writes an audit entry — checked route by route.

The table below maps each state-changing route (POST/PUT/PATCH/DELETE) to a builder of a valid request
and the audit action that request must leave behind. The route list comes from the app itself, so a new
state-changing route that is neither in the table nor exempted (with its reason) fails
``test_every_state_changing_route_is_in_the_audit_table``, and one that forgets ``audit.record`` fails
``test_every_state_changing_route_writes_its_audit_entry`` (on SQLite and on PostgreSQL).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from sqlalchemy import func, select

from edgeml.bundle import SigningKey
from edgeml.fleet.app import api_routes, create_app
from edgeml.fleet.context import FleetContext
from edgeml.fleet.store.models import AuditEntry
from tests.fleet.conftest import Fleet
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Routes that change state but write no audit entry, each with the reason a human needs no record of it.
EXEMPT: dict[tuple[str, str], str] = {
    # The device reports what it observes about itself (last contact, hardware probe, installed
    # versions), as its MQTT telemetry does; nobody decides anything. It runs every few seconds per device,
    # so auditing it would bury the people's changes, and its figures are on the device row anyway.
    ("POST", "/v1/device/heartbeat"): "device self-report (like telemetry), not a change made by someone",
    # A device sends back a sample its capture policy chose (the policy's change is what people decide,
    # and it is signed into the bundle or desired state); like telemetry, one entry per sample would bury
    # the people's changes. The capture row itself records the device, model, version and trigger.
    ("PUT", "/v1/captures/{capture_id}"): "device upload of a sample its signed policy chose (like telemetry)",
}


@dataclass
class Call:
    """A valid request and the audit entry it must write (``target``/``actor`` None: read from the answer)."""

    method: str
    path: str
    token: str | None = None   # None: the admin token
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    actor: str | None = None
    auth: bool = True          # False: the token goes in as-is (enrolment token), not through fleet.call


class World:
    """What the builders need: the fleet, a signing key it trusts, fresh bundles with unique names."""

    def __init__(self, fleet: Fleet, tmp: Path) -> None:
        self.fleet, self.tmp = fleet, tmp
        self.key = SigningKey.generate()
        fleet.trust(self.key)
        self._names = itertools.count()

    def bundle_file(self) -> Path:
        n = next(self._names)
        return make_bundle(self.tmp / f"b{n}.edgepkg", self.key, tiny_mlp(self.tmp / f"b{n}.onnx", seed=n),
                           name=f"audit-m{n}", version="1.0.0")

    def upload(self) -> dict[str, Any]:
        r = self.fleet.call("POST", "/v1/bundles", content=self.bundle_file().read_bytes())
        assert r.status_code == 201, r.text
        return dict(r.json())

    def rollout(self, *, paused: bool = False) -> str:
        bundle = self.upload()
        self.fleet.enroll(group="audit")
        r = self.fleet.call("POST", "/v1/rollouts", json={"bundle": bundle["id"], "group": "audit", "observe_s": 3600})
        assert r.status_code == 201, r.text
        rollout_id = str(r.json()["id"])
        if paused:
            assert self.fleet.call("POST", f"/v1/rollouts/{rollout_id}/pause").status_code == 200
        return rollout_id


def _created_token(w: World) -> Call:
    return Call("POST", "/v1/tokens", kwargs={"json": {"name": "audited", "role": "viewer"}})


def _revoked_token(w: World) -> Call:
    r = w.fleet.call("POST", "/v1/tokens", json={"name": "to-revoke", "role": "viewer"})
    return Call("DELETE", f"/v1/tokens/{r.json()['id']}", target=r.json()["id"])


def _trusted_key(w: World) -> Call:
    key = SigningKey.generate()
    return Call("POST", "/v1/keys", kwargs={"json": {"name": "k2", "public_pem": key.public_pem().decode()}},
                target=key.key_id)


def _untrusted_key(w: World) -> Call:
    key = SigningKey.generate()
    w.fleet.trust(key, name="to-untrust")
    return Call("DELETE", f"/v1/keys/{key.key_id}", target=key.key_id)


def _revoked_key(w: World) -> Call:
    key = SigningKey.generate()
    w.fleet.trust(key, name="to-revoke")
    return Call("POST", f"/v1/keys/{key.key_id}/revoke", target=key.key_id)


def _rotated_fleet_key(w: World) -> Call:
    return Call("POST", "/v1/keys/fleet/rotate")     # the target is the new key id the answer names


def _uploaded_bundle(w: World) -> Call:
    return Call("POST", "/v1/bundles", w.fleet.token("deployer", name="pusher"),
                {"content": w.bundle_file().read_bytes()}, actor="pusher")


def _deleted_bundle(w: World) -> Call:
    bundle = w.upload()
    return Call("DELETE", f"/v1/bundles/{bundle['id']}", target=bundle["id"])


def _enrollment_token(w: World) -> Call:
    return Call("POST", "/v1/enrollment-tokens", kwargs={"json": {"group": "audit"}})


def _enrolment(w: World) -> Call:
    created = w.fleet.call("POST", "/v1/enrollment-tokens", json={}).json()
    return Call("POST", "/v1/enroll", created["token"], {"json": {"name": "cam", "hardware": {}, "installed": {}}},
                actor=f"enrollment:{created['id']}", auth=False)


def _patched_device(w: World) -> Call:
    device = w.fleet.enroll()["device_id"]
    return Call("PATCH", f"/v1/devices/{device}", kwargs={"json": {"add_tags": ["audited"]}}, target=device)


def _revoked_device(w: World) -> Call:
    device = w.fleet.enroll()["device_id"]
    return Call("POST", f"/v1/devices/{device}/revoke", target=device)


def _created_rollout(w: World) -> Call:
    bundle = w.upload()
    w.fleet.enroll(group="audit")
    return Call("POST", "/v1/rollouts", kwargs={"json": {"bundle": bundle["id"], "group": "audit", "observe_s": 3600}})


def _rollout_op(op: str, *, paused: bool = False, body: dict[str, Any] | None = None) -> Callable[[World], Call]:
    def build(w: World) -> Call:
        rollout_id = w.rollout(paused=paused)
        return Call("POST", f"/v1/rollouts/{rollout_id}/{op}", kwargs={"json": body} if body else {}, target=rollout_id)
    return build


def _capture_retention(w: World) -> Call:
    return Call("PUT", "/v1/captures-retention", kwargs={"json": {"max_age_days": 7, "max_per_device_model": 500}},
                target="captures")


def _deleted_captures(w: World) -> Call:
    return Call("DELETE", "/v1/captures", kwargs={"params": {"model": "audited-model"}}, target="audited-model")


# (method, route path) -> (builder of a valid request, the audit action it must write)
AUDITED: dict[tuple[str, str], tuple[Callable[[World], Call], str]] = {
    ("POST", "/v1/tokens"): (_created_token, "token.create"),
    ("DELETE", "/v1/tokens/{token_id}"): (_revoked_token, "token.revoke"),
    ("POST", "/v1/keys"): (_trusted_key, "key.trust"),
    ("DELETE", "/v1/keys/{key_id}"): (_untrusted_key, "key.untrust"),
    ("POST", "/v1/keys/{key_id}/revoke"): (_revoked_key, "key.revoke"),
    ("POST", "/v1/keys/fleet/rotate"): (_rotated_fleet_key, "key.rotate_fleet"),
    ("POST", "/v1/bundles"): (_uploaded_bundle, "bundle.upload"),
    ("DELETE", "/v1/bundles/{ref}"): (_deleted_bundle, "bundle.delete"),
    ("POST", "/v1/enrollment-tokens"): (_enrollment_token, "enrollment_token.create"),
    ("POST", "/v1/enroll"): (_enrolment, "device.enroll"),
    ("PATCH", "/v1/devices/{device_id}"): (_patched_device, "device.update"),
    ("POST", "/v1/devices/{device_id}/revoke"): (_revoked_device, "device.revoke"),
    ("POST", "/v1/rollouts"): (_created_rollout, "rollout.create"),
    ("POST", "/v1/rollouts/{rollout_id}/pause"): (_rollout_op("pause"), "rollout.pause"),
    ("POST", "/v1/rollouts/{rollout_id}/resume"): (_rollout_op("resume", paused=True), "rollout.resume"),
    ("POST", "/v1/rollouts/{rollout_id}/abort"): (_rollout_op("abort", body={"reason": "audit test"}), "rollout.abort"),
    ("PUT", "/v1/captures-retention"): (_capture_retention, "captures.retention"),
    ("DELETE", "/v1/captures"): (_deleted_captures, "captures.delete"),
}


def state_changing_routes() -> set[tuple[str, str]]:
    app = create_app(cast(FleetContext, None))
    return {(method, route.path) for route in api_routes(app)
            for method in route.methods or () if method in STATE_CHANGING}


def test_every_state_changing_route_is_in_the_audit_table() -> None:
    routes = state_changing_routes()
    assert not AUDITED.keys() & EXEMPT.keys()
    missing = routes - AUDITED.keys() - EXEMPT.keys()
    assert not missing, f"state-changing routes with no audit expectation (add them to AUDITED or EXEMPT): {missing}"
    stale = (AUDITED.keys() | EXEMPT.keys()) - routes
    assert not stale, f"table entries for routes the app no longer has: {stale}"
    # the two the issue named, pinned explicitly
    assert AUDITED[("DELETE", "/v1/tokens/{token_id}")][1] == "token.revoke"
    assert AUDITED[("DELETE", "/v1/keys/{key_id}")][1] == "key.untrust"


def _entries_after(fleet: Fleet, last_id: int, action: str) -> list[AuditEntry]:
    with fleet.server.store.session() as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.id > last_id, AuditEntry.action == action))
        return [_detached(r) for r in rows]


def _detached(row: AuditEntry) -> AuditEntry:
    return AuditEntry(id=row.id, actor=row.actor, action=row.action, target=row.target, source=row.source,
                      details=dict(row.details or {}))


def _last_audit_id(fleet: Fleet) -> int:
    with fleet.server.store.session() as session:
        return int(session.execute(select(func.max(AuditEntry.id))).scalar() or 0)


def _send(fleet: Fleet, call: Call) -> httpx.Response:
    if call.auth:
        return cast(httpx.Response, fleet.call(call.method, call.path, call.token, **call.kwargs))
    return fleet.http.request(call.method, call.path, headers=fleet.auth(call.token or ""), **call.kwargs)


def _target_from(answer: dict[str, Any]) -> str:
    for key in ("id", "key_id", "device_id"):
        if key in answer:
            return str(answer[key])
    raise AssertionError(f"cannot tell the changed object from the answer {answer}")


def test_every_state_changing_route_writes_its_audit_entry(fleet: Fleet, tmp_path: Path) -> None:
    world = World(fleet, tmp_path)
    failures: list[str] = []
    for (method, path), (build, action) in sorted(AUDITED.items()):
        # given the state the request needs (made through the API, so its own audit entries come first)
        call = build(world)
        assert call.method == method, (method, path)
        last = _last_audit_id(fleet)
        # when the valid request is sent
        r = _send(fleet, call)
        assert r.is_success, f"{method} {path}: {r.status_code} {r.text}"
        # then exactly one entry with the expected action names the changed object, the caller and its address
        target = call.target or _target_from(r.json())
        entries = [e for e in _entries_after(fleet, last, action) if e.target == target]
        if len(entries) != 1:
            failures.append(f"{method} {path}: {len(entries)} '{action}' entries for {target}")
            continue
        expected_actor = call.actor or "admin"
        if entries[0].actor != expected_actor or not entries[0].source:
            failures.append(f"{method} {path}: actor {entries[0].actor!r} (want {expected_actor!r}), "
                            f"source {entries[0].source!r}")
    assert not failures, "\n".join(failures)



def test_token_revoke_and_key_untrust_are_in_the_audit_log(fleet: Fleet) -> None:
    # given a viewer token and a trusted key
    created = fleet.call("POST", "/v1/tokens", json={"name": "leaver", "role": "viewer"}).json()
    key = SigningKey.generate()
    fleet.trust(key, name="old-builder")
    # when an admin revokes the one and untrusts the other
    assert fleet.call("DELETE", f"/v1/tokens/{created['id']}").status_code == 200
    assert fleet.call("DELETE", f"/v1/keys/{key.key_id}").status_code == 200
    # then the audit log (as an admin reads it) names who did it, to what, and what it was called
    for action, target, name in (("token.revoke", created["id"], "leaver"), ("key.untrust", key.key_id, "old-builder")):
        [entry] = fleet.call("GET", "/v1/audit", params={"action": action}).json()
        assert (entry["actor"], entry["target"], entry["details"]) == ("admin", target, {"name": name})
    # and doing it again changes nothing, so it writes nothing
    assert fleet.call("DELETE", f"/v1/tokens/{created['id']}").status_code == 200
    assert len(fleet.call("GET", "/v1/audit", params={"action": "token.revoke"}).json()) == 1
