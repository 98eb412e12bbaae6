#!/usr/bin/env bash
# Set up .venv, then run the main job on the built-in default model (SmolLM2-135M-Instruct):
# bias evaluation on the report split (StereoSet dev.json, all of CrowS-Pairs). Extra flags pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export BIASUNLEARN_DATA=${BIASUNLEARN_DATA:-$(cd .. && pwd)/shared/data}
.venv/bin/biasunlearn eval --model smollm2-135m-instruct --benchmarks stereoset,crows_pairs \
  --split report --out "${OUT:-runs/main}" "$@"
