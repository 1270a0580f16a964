"""What agent and fleet say to each other, in one place of the shared core (imports neither side).

**MQTT topics** (``{d}`` = device id, see DESIGN.md):

- ``edgeml/v1/{d}/status``    retained, ``{"state": "online"|"offline", ...}``; the last-will says offline
- ``edgeml/v1/{d}/telemetry`` QoS 1, envelopes of kind ``telemetry`` and ``heartbeat``
- ``edgeml/v1/{d}/events``    QoS 1, envelopes of kind ``event``
- ``edgeml/v1/{d}/desired``   retained, written by the fleet only

and who may use which: a device (username = its id) may publish only under
``edgeml/v1/<own id>/`` and subscribe only to its own ``edgeml/v1/<own id>/desired``. The fleet's
service account reads everything under ``edgeml/`` and writes only the ``desired`` topics. One rule set
serves the embedded broker and Mosquitto.

**Update states and events** of the agent's state machine (``edgeml_agent.updates.machine``): the
agent persists them and reports them in ``update`` events; the fleet reads them from those events.
They are ``StrEnum`` members whose values are the wire strings, so records and messages written before
the enums existed read the same.

**Rollout states**: the fleet's rollout and per-device rollout states, as stored and as the API shows them.
"""

from __future__ import annotations

from enum import StrEnum

# -- MQTT topics -----------------------------------------------------------------------------------------
ROOT = "edgeml/v1"
SERVICE_USERNAME = "edgeml-fleet"


def device_prefix(device_id: str) -> str:
    return f"{ROOT}/{device_id}"


def desired_topic(device_id: str) -> str:
    return f"{ROOT}/{device_id}/desired"


def status_topic(device_id: str) -> str:
    return f"{device_prefix(device_id)}/status"


KINDS = ("telemetry", "heartbeat", "event")   # envelope kinds (edgeml.telemetry.messages)


def topic_for(device_id: str, kind: str) -> str:
    """Where a device publishes an envelope of ``kind``: events apart from telemetry and heartbeats."""
    if kind not in KINDS:
        raise ValueError(f"unknown telemetry kind {kind!r}")
    return f"{device_prefix(device_id)}/{'events' if kind == 'event' else 'telemetry'}"


def device_from_topic(topic: str) -> tuple[str, str] | None:
    """(device id, leaf) for ``edgeml/v1/<id>/<leaf>``, else None."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != ROOT or not parts[2]:
        return None
    return parts[2], parts[3]


def _has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


# What a device writes, on both brokers: status (retained, also its last will), telemetry and events (QoS 1).
# Never ``desired``, not even its own: only the fleet writes it (a device that could write its own retained
# ``desired`` topic could replace the fleet's signed document with an old or garbage one). Mosquitto's
# acl_file has no "all but one" rule, so the writable leaves are listed.
DEVICE_WRITABLE_LEAVES = ("status", "telemetry", "events")


def device_may_publish(device_id: str, topic: str) -> bool:
    return topic in {f"{device_prefix(device_id)}/{leaf}" for leaf in DEVICE_WRITABLE_LEAVES}


def device_may_subscribe(device_id: str, topic_filter: str) -> bool:
    return topic_filter == desired_topic(device_id)


def service_may_publish(topic: str) -> bool:
    parts = topic.split("/")
    return (not _has_wildcard(topic) and len(parts) == 4 and f"{parts[0]}/{parts[1]}" == ROOT and bool(parts[2])
            and parts[3] == "desired")


def service_may_subscribe(topic_filter: str) -> bool:
    # "$share/<group>/edgeml/…" is how several server processes split telemetry ingest between them.
    return topic_filter.startswith("edgeml/") or (topic_filter.startswith("$share/") and "/edgeml/" in topic_filter)


# -- the agent's update state machine ------------------------------------------------------------------------
class UpdateState(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    SMOKE_TESTING = "smoke_testing"
    SWITCHING = "switching"
    PROBATION = "probation"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"


class UpdateEvent(StrEnum):
    UPDATE = "update"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    STAGED = "staged"
    SMOKE_OK = "smoke_ok"
    SWITCHED = "switched"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    ROLLED_BACK = "rolled_back"
    DONE = "done"
    FAIL = "fail"
    BOOT_LOOP = "boot_loop"      # the agent restarted too often inside one state


UPDATE_EVENT = "update"          # the telemetry event kind that carries a transition (body["state"], ...)


# -- rollouts (fleet side) -----------------------------------------------------------------------------------
class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTING = "aborting"
    ABORTED = "aborted"
    COMPLETED = "completed"


class RolloutDeviceState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    UPDATING = "updating"
    INSTALLED = "installed"
    FAILED = "failed"
    OFFLINE = "offline"
    REVERTED = "reverted"


__all__ = [
    "DEVICE_WRITABLE_LEAVES",
    "KINDS", "ROOT", "SERVICE_USERNAME", "UPDATE_EVENT", "RolloutDeviceState", "RolloutState", "UpdateEvent",
    "UpdateState", "desired_topic", "device_from_topic", "device_may_publish", "device_may_subscribe",
    "device_prefix", "service_may_publish", "service_may_subscribe", "status_topic", "topic_for",
]
