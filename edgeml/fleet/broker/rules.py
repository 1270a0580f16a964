"""Which topics a device may write, for both brokers (the amqtt topic plugin and Mosquitto's acl_file).

A device writes only the leaves the agent publishes under its own prefix — never ``desired``, which only
the fleet writes (a device that could write its own retained ``desired`` topic could replace the fleet's
signed document with an old or garbage one). Mosquitto's acl_file has no "all but one" rule, so the
writable leaves are listed, and the same list holds on the embedded broker.
"""

from __future__ import annotations

from edgeml.fleet.topics import device_may_publish, device_prefix

# edgeml.telemetry.messages: status (retained, also the last will), telemetry and events (QoS 1).
DEVICE_WRITABLE_LEAVES = ("status", "telemetry", "events")


def device_may_write(device_id: str, topic: str) -> bool:
    return device_may_publish(device_id, topic) and topic in {
        f"{device_prefix(device_id)}/{leaf}" for leaf in DEVICE_WRITABLE_LEAVES}
