#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite. Extra arguments go to pytest.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -m arm64   # only the emulated-arm64 tests
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# System tools some tests drive for real: a Mosquitto broker binary (tests start their own instances).
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] && [ "$(id -u)" = 0 ]; then
  echo "==> installing mosquitto (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
VENV=${EDGEML_VENV:-.venv}
echo "==> running the test suite"
exec "$VENV/bin/python" -m pytest "$@"
