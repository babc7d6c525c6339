#!/usr/bin/env bash
# One command: set up (with test extras) and run the test suite, offline.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/setup.sh --dev
.venv/bin/python -m pytest "$@"
