#!/usr/bin/env bash
# Static checks: ruff (rules E, F, I, B, UP; line length 120; configured in pyproject.toml) over the project's
# Python files and mypy over kb_qa/ (ignore_missing_imports; bodies of unannotated functions are not checked).
# Usage: bash scripts/check.sh            everything
#        bash scripts/check.sh FILE...     ruff on just these files (mypy still checks kb_qa/ as a whole)
# Needs the dev requirements (bash scripts/setup.sh --dev). Never rewrites files; `ruff check --fix` is yours
# to run deliberately.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
if [ "$#" -gt 0 ]; then
  "$PY" -m ruff check "$@"
else
  "$PY" -m ruff check kb_qa tests bench webui.py setup.py
fi
"$PY" -m mypy
echo "check: ruff and mypy passed"
