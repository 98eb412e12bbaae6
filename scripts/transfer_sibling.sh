#!/usr/bin/env bash
# The weight-transfer comparison of issue 5 (paper §4.3) on a sibling of the built-in model:
#   1. derive the sibling: full fine-tune of SmolLM2-135M-Instruct on SQLite documentation (no social text);
#   2. evaluate the sibling (a) without adapter, (b) with the BiasUnlearn adapter trained on the built-in
#      model (`biasunlearn transfer --eval`), (c) with an adapter trained on the sibling itself;
#   3. write results/transfer/sibling/ (table and per-run results).
# Each step is skipped when its output exists and the training resumes from its checkpoints, so the
# pipeline can be stopped and started again. Hours on a 2-core CPU.
#
#   bash scripts/transfer_sibling.sh [ADAPTER] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ADAPTER=${1:-results/biasunlearn-smollm2/adapter}
WORK=${2:-runs/sibling}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export BIASUNLEARN_DATA=${BIASUNLEARN_DATA:-$(cd .. && pwd)/shared/data}
TEXT=${TEXT_DIR:-runs/textdata}
PY=.venv/bin/python
BU=.venv/bin/biasunlearn
STEPS=${SIBLING_STEPS:-100}

[ -f "$TEXT/text/finetune.txt" ] || $PY scripts/prepare_text.py --out "$TEXT"
[ -f "$WORK/model/sibling.json" ] || $PY scripts/make_sibling.py --text "$TEXT/text/finetune.txt" \
    --out "$WORK" --steps "$STEPS"
[ -f "$WORK/eval-none/results.json" ] || $BU eval --model "$WORK/model" \
    --benchmarks stereoset,crows_pairs --out "$WORK/eval-none"
[ -f "$WORK/transferred/eval/results.json" ] || $BU transfer --adapter "$ADAPTER" --to-model "$WORK/model" \
    --eval --out "$WORK/transferred"
if [ ! -f "$WORK/own/adapter/provenance.json" ]; then
    RESUME=()
    if compgen -G "$WORK/own/checkpoints/checkpoint-*" > /dev/null; then RESUME=(--resume); fi
    # the same training options as the adapter being transferred (its provenance.json records them);
    # JSON is YAML
    mkdir -p "$WORK"
    $PY -c 'import json, sys
c = json.load(open(sys.argv[1]))["config"]
for k in ("model", "out", "resume", "data_dir", "cache_dir", "device", "preset"):
    c.pop(k, None)
print(json.dumps(c))' "$ADAPTER/provenance.json" > "$WORK/own-config.yaml"
    $BU train --config "$WORK/own-config.yaml" --model "$WORK/model" --out "$WORK/own" "${RESUME[@]}"
fi
[ -f "$WORK/eval-own/results.json" ] || $BU eval --model "$WORK/model" --adapter "$WORK/own/adapter" \
    --benchmarks stereoset,crows_pairs --out "$WORK/eval-own"
$PY scripts/transfer_table.py --work "$WORK" --adapter "$ADAPTER" --out results/transfer/sibling
