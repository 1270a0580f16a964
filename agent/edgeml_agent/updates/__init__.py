"""Over-the-air model updates on the device: a crash-safe state machine driven by the fleet's signed
desired state (see :mod:`edgeml.desired` and DESIGN.md)."""
