"""Staged rollouts: waves over the devices a selector picks, gated on the devices' own telemetry.

``controller.RolloutController`` runs in the server; ``service`` holds the API's operations;
``desired_docs`` signs the per-device desired states with the fleet's key; ``plan`` and ``gates``
are the pure rules (waves, selector, pass/fail).
"""

from edgeml.fleet.rollouts.gates import Gates, Verdict, judge
from edgeml.fleet.rollouts.plan import Selector, assign_waves, parse_waves, wave_sizes

__all__ = ["Gates", "Selector", "Verdict", "assign_waves", "judge", "parse_waves", "wave_sizes"]
