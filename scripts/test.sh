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
# Debian's chromium for the dashboard's browser test (driven by Playwright; never 'playwright install').
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
  echo "==> installing chromium (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# promtool (Debian's prometheus package) checks and unit-tests deploy/prometheus's alert rules.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "==> installing promtool (apt-get prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
VENV=${EDGEML_VENV:-.venv}
# The TFLite converter's isolated toolchain (~2.4 GB, cached outside the clone; a no-op when current).
echo "==> TFLite converter toolchain"
"$VENV/bin/edgeml" toolchain install tflite -q
# The PyTorch / Hugging Face exporter's toolchain (torch 2.13.0 CPU from the local wheel, ≈1.1 GB, cached
# beside the TFLite one; a no-op when current).
echo "==> torch exporter toolchain"
"$VENV/bin/edgeml" toolchain install torch -q
echo "==> running the test suite"
exec "$VENV/bin/python" -m pytest "$@"
