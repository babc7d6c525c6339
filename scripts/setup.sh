#!/usr/bin/env bash
# Creates .venv (Python >= 3.10), installs the pinned requirements (the tested lock) into it, then kb_qa itself
# the way a user of a checkout does: editable, so the `kb-qa` command and `python -m kb_qa...` run this folder's
# code from any directory. Safe to re-run.
# Usage: bash scripts/setup.sh [--dev]     (--dev also installs what the tests and scripts/check.sh need)
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
# --no-deps: the dependencies are exactly the lock above; pyproject.toml's ranges are for installs from an index.
.venv/bin/python -m pip install --quiet --no-deps -e .
