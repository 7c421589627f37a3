#!/usr/bin/env bash
# Issue #7: does the composite regime (annotated objects pasted onto other train videos) help?
# Same recipe as runs/abl_cycle, with part of the static weight given to composite pseudo-clips.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
A=(optim.steps=300 optim.warmup=50 ckpt_every=100 log.wandb=disabled "data.size=[224,224]")
D="{kind: davis2016, root: ../shared/data/davis2016, split: train, annotated: first"
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_composite \
  "data.sources=[$D, regime: sparse, weight: 0.5}, $D, regime: static, weight: 0.15}, $D, regime: composite, weight: 0.2}, {kind: synthetic, regime: static, length: 200, weight: 0.15}]" \
  > runs/abl_composite.log 2>&1
scripts/eval_dev.sh runs/abl_composite/checkpoint.pt outputs/dev_abl_composite > results/dev_abl_composite.txt 2>&1
