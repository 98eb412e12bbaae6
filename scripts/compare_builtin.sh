#!/usr/bin/env bash
# The method comparison of issue 4 on the built-in model: base, BiasUnlearn (the committed adapter), CDA,
# SFT, DPO, Self-Debias, CAFIE and BiasEdit on the full report split (StereoSet dev.json, all CrowS-Pairs),
# into OUT (default runs/compare). Hours on a CPU; rerunning continues where it stopped (--resume reuses
# finished trainings and evaluations, resumes trainings from their checkpoints).
# PARALLEL=1 first runs the trained and the decoding-time methods as two one-thread processes side by side
# (more throughput on a small CPU), then the full command, which reuses their results and writes the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export BIASUNLEARN_DATA=${BIASUNLEARN_DATA:-$(cd .. && pwd)/shared/data}
OUT=${OUT:-runs/compare}
common=(--model smollm2-135m-instruct --benchmarks stereoset,crows_pairs --save-steps 25 --out "$OUT" --resume)
if [[ "${PARALLEL:-0}" == 1 ]]; then
  .venv/bin/biasunlearn compare "${common[@]}" --methods base --cost-sentences 0  # once, before the two share it
  OMP_NUM_THREADS=1 .venv/bin/biasunlearn compare "${common[@]}" --methods base,cda,sft,dpo,biasedit \
    --cost-sentences 0 &
  a=$!
  OMP_NUM_THREADS=1 .venv/bin/biasunlearn compare "${common[@]}" --methods base,self_debias,cafie --cost-sentences 0 &
  b=$!
  wait $a
  wait $b
fi
.venv/bin/biasunlearn compare "${common[@]}" --methods base,biasunlearn,cda,sft,dpo,self_debias,cafie,biasedit \
  --adapters biasunlearn=results/biasunlearn-smollm2/adapter
