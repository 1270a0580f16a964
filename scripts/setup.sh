#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install edgeml with every extra.
# Usage: source-free; other scripts call it. EDGEML_VENV overrides the venv location (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
VENV=${EDGEML_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtual environment $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "==> installing edgeml[${EDGEML_EXTRAS:-all,test}] (editable)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[${EDGEML_EXTRAS:-all,test}]"
