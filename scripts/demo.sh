#!/usr/bin/env bash
# The one-command demo: set up the environment (scripts/setup.sh), then run the whole edgeml loop on
# this machine (examples/fleet_demo.py): build v1/v2/v3, start a fleet and three agents, roll out v2 in
# waves, stop a bad v3 with the telemetry gate, then close the loop: one camera drifts, its captured samples
# build v4, and a drift-gated rollout takes v4 to it. Extra arguments go to the demo (e.g. --exit, --observe 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${EDGEML_VENV:-.venv}
exec "$VENV/bin/python" examples/fleet_demo.py "$@"
