"""Telemetry shared by the agent (which produces it) and the fleet (which stores and judges it):
message envelopes and topics, fixed latency buckets, running tensor summaries and drift (PSI)."""
