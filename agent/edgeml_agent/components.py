"""The agent's optional components, built from the config: telemetry first (the update component
reports through it and receives desired states over its MQTT connection), then updates."""

from __future__ import annotations

from typing import Any

from edgeml_agent.config import AgentConfig
from edgeml_agent.telemetry.component import TelemetryComponent, TelemetryConfig
from edgeml_agent.updates.component import UpdateComponent


def build_components(config: AgentConfig) -> list[Any]:
    telemetry = TelemetryComponent(config.sections.get("telemetry") or TelemetryConfig())
    return [telemetry, UpdateComponent(config)]
