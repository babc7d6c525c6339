#!/usr/bin/env bash
# Creates .venv (Python >= 3.10) and installs the pinned requirements into it. Safe to re-run.
# Usage: bash scripts/setup.sh [--dev]     (--dev also installs what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
fi
