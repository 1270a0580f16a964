"""The device write rule both brokers enforce: its own status, telemetry and events topics, never desired."""

from __future__ import annotations

import pytest

from edgeml.fleet.broker.mosquitto import acl_text
from edgeml.protocol import device_may_publish


@pytest.mark.parametrize(("topic", "allowed"), [
    ("edgeml/v1/dev-a/status", True),
    ("edgeml/v1/dev-a/telemetry", True),
    ("edgeml/v1/dev-a/events", True),
    ("edgeml/v1/dev-a/desired", False),
    ("edgeml/v1/dev-a/desired/x", False),
    ("edgeml/v1/dev-a/telemetry/x", False),
    ("edgeml/v1/dev-b/telemetry", False),
    ("edgeml/v1/dev-b/desired", False),
    ("edgeml/v1/dev-a/other", False),
    ("edgeml/v1/+/telemetry", False),
])
def test_device_write_rule(topic: str, allowed: bool) -> None:
    assert device_may_publish("dev-a", topic) is allowed


def test_the_mosquitto_acl_grants_devices_the_same_writes() -> None:
    writes = sorted(line.split()[2] for line in acl_text().splitlines() if line.startswith("pattern write"))
    assert writes == ["edgeml/v1/%u/events", "edgeml/v1/%u/status", "edgeml/v1/%u/telemetry"]
    reads = [line.split()[2] for line in acl_text().splitlines() if line.startswith("pattern read")]
    assert reads == ["edgeml/v1/%u/desired"]
