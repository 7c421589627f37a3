#!/usr/bin/env bash
# Segment the DAVIS-2016 dev split with a checkpoint (or a baseline) and print the J&F table.
#   scripts/eval_dev.sh CHECKPOINT|copy|flow OUT_DIR [infer overrides, e.g. window=3 anchor_first=false]
set -euo pipefail
cd "$(dirname "$0")/.."
what=$1; out=$2; shift 2
PY=${PY:-.venv/bin/python}
data=${DAVIS2016:-../shared/data/davis2016}
if [[ "$what" == copy || "$what" == flow ]]; then method=(--method "$what"); else method=(--checkpoint "$what"); fi
"$PY" infer.py --dataset-root "$data" --layout davis2016 --split dev --out "$out" "${method[@]}" "$@" 2>/dev/null | tail -1
"$PY" -m vos.eval --dataset-root "$data" --layout davis2016 --split dev --results "$out"
