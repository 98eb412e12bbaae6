#!/usr/bin/env bash
# Set up .venv, then run the main job on the built-in default model (SmolLM2-135M-Instruct):
# `biasunlearn run` = bias evaluation on the report split (StereoSet dev.json, all of CrowS-Pairs), BiasUnlearn
# training to the stop criterion, the same evaluation with the adapter, and OUT/report.md with plots.
# Extra flags pass through (e.g. --preset quick for a short demonstration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export BIASUNLEARN_DATA=${BIASUNLEARN_DATA:-$(cd .. && pwd)/shared/data}
.venv/bin/biasunlearn run --model smollm2-135m-instruct --benchmarks stereoset,crows_pairs --beta 1.0 --out "${OUT:-runs/main}" "$@"
