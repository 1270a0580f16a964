"""Mosquitto's dynamic-security plugin as the fleet's credential store on the broker side.

Rewriting a password file and signalling a reload has two failure modes seen in the field: concurrent
writers racing on the file, and a reload signal that Mosquitto never acted on, so an enrolled device was
refused until someone reloaded by hand. With the dynamic-security plugin a device's credentials and ACLs
are added by a control message (``$CONTROL/dynamic-security/v1``) that the broker *answers*: when the
answer says "done", the broker accepts the device; when it does not come, the enrolment fails and rolls
back. Revocation deletes the client, which also disconnects it at once.

The plugin stores passwords as PBKDF2-SHA512 with salt and iteration count, the same as the ``$7$``
hashes in the fleet's store, so the plugin's JSON file can be written from the store at start-up without
knowing any password (:func:`dynsec_document`).

Mosquitto 2.0's dynamic-security ACLs have no ``%u`` pattern (tried: a ``edgeml/v1/%u/desired`` subscribe
rule refuses the device's own topic), so every device gets a role of its own naming its topics literally.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from edgeml.errors import FleetError
from edgeml.protocol import DEVICE_WRITABLE_LEAVES, ROOT, desired_topic, device_prefix

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ADMIN_USERNAME = "edgeml-broker-admin"
SERVICE_ROLE = "edgeml-fleet-service"
COMMAND_TIMEOUT_S = 10.0


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def device_role(device_id: str) -> dict[str, Any]:
    """A device's own role: write its status/telemetry/events, read only its own ``desired``."""
    acls = [_acl("publishClientSend", f"{device_prefix(device_id)}/{leaf}") for leaf in DEVICE_WRITABLE_LEAVES]
    acls += [_acl("subscribePattern", desired_topic(device_id)), _acl("publishClientReceive", desired_topic(device_id))]
    return {"rolename": f"device-{device_id}", "acls": acls}


def service_role() -> dict[str, Any]:
    """The fleet's service account: reads every device topic (shared subscriptions too), writes ``desired``."""
    return {"rolename": SERVICE_ROLE, "acls": [
        _acl("subscribePattern", "edgeml/#"), _acl("subscribePattern", "$share/#"),
        _acl("publishClientReceive", "edgeml/#"), _acl("publishClientSend", f"{ROOT}/+/desired"),
        _acl("unsubscribePattern", "#"),
    ]}


def admin_role() -> dict[str, Any]:
    control = "$CONTROL/dynamic-security/#"
    return {"rolename": "edgeml-broker-admin", "acls": [
        _acl("publishClientSend", control), _acl("publishClientReceive", control), _acl("subscribePattern", control),
    ]}


def _client(username: str, password_hash: str, rolename: str) -> dict[str, Any]:
    """A dynsec client entry from a ``$7$<iterations>$<salt b64>$<hash b64>`` hash (same PBKDF2-SHA512)."""
    try:
        _, kind, iterations, salt, digest = password_hash.split("$")
    except ValueError:
        kind = ""
    if kind != "7":
        raise FleetError(f"the broker password of '{username}' is not a $7$ hash; re-enrol the device")
    return {"username": username, "password": digest, "salt": salt, "iterations": int(iterations),
            "roles": [{"rolename": rolename}]}


def dynsec_document(accounts: list[tuple[str, str]], admin_hash: str) -> dict[str, Any]:
    """The plugin's whole JSON file: ``accounts`` as (username, $7$ hash), the first one the service account."""
    (service_user, service_hash), *devices = accounts
    clients = [_client(ADMIN_USERNAME, admin_hash, "edgeml-broker-admin"),
               _client(service_user, service_hash, SERVICE_ROLE)]
    clients += [_client(device_id, pw_hash, f"device-{device_id}") for device_id, pw_hash in devices]
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": clients, "groups": [],
        "roles": [admin_role(), service_role()] + [device_role(device_id) for device_id, _ in devices],
    }


def add_device_commands(device_id: str, password: str) -> list[dict[str, Any]]:
    role = device_role(device_id)
    return [{"command": "createRole", **role},
            {"command": "createClient", "username": device_id, "password": password,
             "roles": [{"rolename": role["rolename"]}]}]


def remove_device_commands(device_id: str) -> list[dict[str, Any]]:
    return [{"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": f"device-{device_id}"}]


@dataclass
class _Pending:
    done: threading.Event
    responses: list[dict[str, Any]]


class DynsecControl:
    """A paho session of the broker admin that sends control commands and waits for the broker's answers.

    Concurrency: any thread may call :meth:`run`; each call carries its own ``correlationData`` and waits
    on its own event, so concurrent enrolments do not serialize behind one another.
    """

    def __init__(self, host: str, port: int, password: str) -> None:
        import paho.mqtt.client as mqtt

        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{ADMIN_USERNAME}-{secrets.token_hex(4)}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.username_pw_set(ADMIN_USERNAME, password)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_disconnect = lambda *a: self._subscribed.clear()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        self._client = client
        client.connect_async(host, port, keepalive=30)
        client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        for response in responses:
            with self._lock:
                pending = self._pending.get(str(response.get("correlationData", "")))
            if pending is not None:
                pending.responses.append(response)
                pending.done.set()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the admin session is logged in and subscribed to the answers within ``timeout_s``."""
        return self._subscribed.wait(timeout_s)

    def run(self, commands: list[dict[str, Any]], *, timeout_s: float = COMMAND_TIMEOUT_S,
            tolerate: tuple[str, ...] = ()) -> None:
        """Send ``commands`` and wait until the broker answered every one; raise FleetError on a refusal
        (except errors whose text contains one of ``tolerate``, e.g. "not found" when deleting)."""
        if not self._subscribed.wait(timeout_s):
            raise FleetError("the managed Mosquitto's control channel is not connected; is the broker running?")
        key = secrets.token_hex(8)
        pending = _Pending(threading.Event(), [])
        with self._lock:
            self._pending[key] = pending
        try:
            tagged = [{**c, "correlationData": key} for c in commands]
            self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            deadline_ok = _wait_for(pending, len(commands), timeout_s)
        finally:
            with self._lock:
                self._pending.pop(key, None)
        if not deadline_ok:
            raise FleetError(f"the broker did not confirm {[c['command'] for c in commands]} within {timeout_s:.0f} s")
        errors = [r for r in pending.responses if r.get("error") and not any(t in r["error"] for t in tolerate)]
        if errors:
            raise FleetError("the broker refused " + "; ".join(f"{r.get('command')}: {r['error']}" for r in errors))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _wait_for(pending: _Pending, count: int, timeout_s: float) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while len(pending.responses) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        pending.done.wait(min(left, 0.05))
    return True
