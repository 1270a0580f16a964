"""Enrolment, inventory, tags/groups, revocation and the audit trail of every change."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from edgeml.fleet.credentials import check_mosquitto_hash
from edgeml.fleet.store.models import Device, EnrollmentToken, utcnow


def test_enrolment_gives_a_device_its_own_credentials(fleet) -> None:
    # given a one-time enrolment token carrying a group and tags
    r = fleet.call("POST", "/v1/enrollment-tokens", fleet.token("deployer"),
                   json={"group": "lobby", "tags": ["cam", "floor-1", "cam"], "expires_in_s": 600})
    assert r.status_code == 201
    enrol = r.json()
    assert enrol["token"].startswith("efe_") and enrol["tags"] == ["cam", "floor-1"]
    # when a device enrols with its host probe
    hardware = {"arch": "aarch64", "cpu_count": 4, "runtimes": {"onnxruntime": "1.32.0"}}
    r = fleet.http.post("/v1/enroll", headers=fleet.auth(enrol["token"]),
                        json={"name": "cam-7", "hardware": hardware, "installed": {"bundles": {"det": "1.0.0"}}})
    # then it gets an id, an API token and broker credentials for its own topics
    assert r.status_code == 201, r.text
    creds = r.json()
    device_id = creds["device_id"]
    assert creds["api_token"].startswith("efl_")
    assert creds["mqtt"]["username"] == device_id and creds["mqtt"]["port"] == 18830
    assert creds["mqtt"]["topic_prefix"] == f"edgeml/v1/{device_id}"
    assert fleet.call("GET", "/v1/whoami", creds["api_token"]).json()["device_id"] == device_id
    with fleet.server.store.session() as s:
        row = s.get(Device, device_id)
        assert row is not None and check_mosquitto_hash(row.mqtt_password_hash, creds["mqtt"]["password"])
        assert creds["mqtt"]["password"] not in row.mqtt_password_hash
    # and the inventory shows what it reported, in its group with its tags, online
    shown = fleet.call("GET", f"/v1/devices/{device_id}", fleet.token("viewer")).json()
    assert shown["name"] == "cam-7" and shown["group"] == "lobby" and shown["tags"] == ["cam", "floor-1"]
    assert shown["hardware"] == hardware and shown["installed"] == {"bundles": {"det": "1.0.0"}}
    assert shown["online"] is True and shown["revoked"] is False
    # the enrolment token worked once only
    again = fleet.http.post("/v1/enroll", headers=fleet.auth(enrol["token"]), json={})
    assert again.status_code == 401 and "already used" in again.json()["detail"]


def test_expired_enrolment_token_is_refused(fleet) -> None:
    token = fleet.call("POST", "/v1/enrollment-tokens", json={}).json()["token"]
    with fleet.server.store.session() as s:
        s.execute(update(EnrollmentToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = fleet.http.post("/v1/enroll", headers=fleet.auth(token), json={})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert fleet.call("GET", "/v1/devices").json() == []


def test_heartbeat_updates_inventory_and_online_state(fleet) -> None:
    device = fleet.enroll()
    did = device["device_id"]
    with fleet.server.store.session() as s:
        s.execute(update(Device).values(last_seen=utcnow() - timedelta(hours=1)))
    assert fleet.call("GET", f"/v1/devices/{did}").json()["online"] is False
    assert [d["id"] for d in fleet.call("GET", "/v1/devices", params={"online": "false"}).json()] == [did]
    r = fleet.call("POST", "/v1/device/heartbeat", device["api_token"],
                   json={"installed": {"bundles": {"det": "2.0.0"}}})
    assert r.status_code == 200
    shown = fleet.call("GET", f"/v1/devices/{did}").json()
    assert shown["online"] is True and shown["installed"] == {"bundles": {"det": "2.0.0"}}
    assert shown["hardware"] == {"arch": "x86_64"}  # not sent: unchanged
    assert [d["id"] for d in fleet.call("GET", "/v1/devices", params={"online": "true"}).json()] == [did]


def test_tags_groups_and_filters(fleet) -> None:
    a = fleet.enroll(group="lobby", tags=["cam"])["device_id"]
    b = fleet.enroll(group="dock", tags=["cam", "gate"])["device_id"]
    deployer = fleet.token("deployer")
    r = fleet.call("PATCH", f"/v1/devices/{a}", deployer, json={"add_tags": ["beta"], "remove_tags": ["cam"]})
    assert r.status_code == 200 and r.json()["tags"] == ["beta"]
    r = fleet.call("PATCH", f"/v1/devices/{b}", deployer, json={"group": "lobby"})
    assert r.json()["group"] == "lobby"
    ids = lambda **q: sorted(d["id"] for d in fleet.call("GET", "/v1/devices", params=q).json())  # noqa: E731
    assert ids(group="lobby") == sorted([a, b])
    assert ids(tag="beta") == [a]
    assert ids(tag="cam") == [b]
    r = fleet.call("PATCH", f"/v1/devices/{b}", deployer, json={"group": ""})
    assert r.json()["group"] is None
    assert fleet.call("PATCH", f"/v1/devices/{a}", deployer, json={"add_tags": ["bad tag!"]}).status_code == 422
    assert fleet.call("PATCH", "/v1/devices/dev-nope", deployer, json={}).status_code == 404


def test_revoke_removes_the_device_from_listings_and_its_token(fleet) -> None:
    device = fleet.enroll()
    did = device["device_id"]
    r = fleet.call("POST", f"/v1/devices/{did}/revoke")
    assert r.status_code == 200 and r.json()["revoked"] is True and r.json()["online"] is False
    assert fleet.call("GET", "/v1/devices").json() == []
    assert [d["id"] for d in fleet.call("GET", "/v1/devices", params={"include_revoked": "true"}).json()] == [did]
    assert fleet.call("GET", "/v1/whoami", device["api_token"]).status_code == 401
    assert fleet.server.accounts.login(did, device["mqtt"]["password"]) is None


def test_every_change_is_audited_with_who_what_when_where(fleet) -> None:
    ops = fleet.token("admin", name="ops")
    fleet.call("POST", "/v1/tokens", ops, json={"name": "ci", "role": "viewer"})
    device = fleet.enroll(group="g")
    did = device["device_id"]
    fleet.call("PATCH", f"/v1/devices/{did}", ops, json={"add_tags": ["x"]})
    fleet.call("POST", f"/v1/devices/{did}/revoke", ops)
    # filter by actor
    by_ops = fleet.call("GET", "/v1/audit", params={"actor": "ops"}).json()
    assert [e["action"] for e in by_ops] == ["device.revoke", "device.update", "token.create"]
    assert all(e["source"] == "testclient" and e["at"] for e in by_ops)
    assert by_ops[1]["details"] == {"tags": ["x"]}
    # filter by action prefix and target
    device_events = fleet.call("GET", "/v1/audit", params={"action": "device.", "target": did}).json()
    assert [e["action"] for e in device_events] == ["device.revoke", "device.update", "device.enroll"]
    assert device_events[2]["actor"].startswith("enrollment:")
    # time window and limit
    since = by_ops[0]["at"]
    assert [e["action"] for e in fleet.call("GET", "/v1/audit", params={"since": since}).json()] == ["device.revoke"]
    assert len(fleet.call("GET", "/v1/audit", params={"limit": 2}).json()) == 2
    assert fleet.call("GET", "/v1/audit", params={"limit": 0}).status_code == 422
