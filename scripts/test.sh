#!/usr/bin/env bash
# Set up .venv, then lint and run the whole test suite offline (includes one smoke test on the built-in model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Tests read the benchmark data from ../shared/data unless BIASUNLEARN_DATA says otherwise.
export BIASUNLEARN_DATA=${BIASUNLEARN_DATA:-$(cd .. && pwd)/shared/data}
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/python -m pytest -q "$@"
