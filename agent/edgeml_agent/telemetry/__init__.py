"""The agent's telemetry: an on-disk spool, one MQTT publisher thread, and the collector that turns
inference observations into periodic messages. Wired into the daemon as a component."""
