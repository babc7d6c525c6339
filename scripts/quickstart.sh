#!/usr/bin/env bash
# One command: set up, build the sample knowledge base, and answer a question from it.
# Usage: bash scripts/quickstart.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1   # nothing downloads at run time: models come from local folders or pip packages
bash scripts/setup.sh
echo "== ingesting knowledge_base/samples into the knowledge base 'samples'"
.venv/bin/python -m kb_qa.ingest --kb samples
.venv/bin/python -m kb_qa.kb show samples
QUESTION="${1:-大模型推理优化有哪些策略？}"
echo "== asking: $QUESTION"
.venv/bin/python -m kb_qa.ask "$QUESTION" --kb samples
