"""MQTT topic layout and who may use which topic — one rule set for the embedded broker and Mosquitto.

A device (username = its id) may publish only under ``edgeml/v1/<own id>/`` and subscribe only to its
own ``edgeml/v1/<own id>/desired``. The fleet's service account reads everything under ``edgeml/`` and
writes only the ``desired`` topics.
"""

from __future__ import annotations

ROOT = "edgeml/v1"
SERVICE_USERNAME = "edgeml-fleet"


def device_prefix(device_id: str) -> str:
    return f"{ROOT}/{device_id}"


def desired_topic(device_id: str) -> str:
    return f"{ROOT}/{device_id}/desired"


def _has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


def device_may_publish(device_id: str, topic: str) -> bool:
    parts = topic.split("/")
    return (not _has_wildcard(topic) and len(parts) >= 4 and "/".join(parts[:3]) == device_prefix(device_id)
            and all(parts[3:]))


def device_may_subscribe(device_id: str, topic_filter: str) -> bool:
    return topic_filter == desired_topic(device_id)


def service_may_publish(topic: str) -> bool:
    parts = topic.split("/")
    return (not _has_wildcard(topic) and len(parts) == 4 and f"{parts[0]}/{parts[1]}" == ROOT and bool(parts[2])
            and parts[3] == "desired")


def service_may_subscribe(topic_filter: str) -> bool:
    # "$share/<group>/edgeml/…" is how several server processes split telemetry ingest between them.
    return topic_filter.startswith("edgeml/") or (topic_filter.startswith("$share/") and "/edgeml/" in topic_filter)
