#!/usr/bin/env bash
# Issue #7: the default recipe (300 steps) with 288x288 training crops, the inference resolution.
set -u
cd "$(dirname "$0")/.."
.venv/bin/python train.py --config configs/train/cycle_davis.yaml optim.steps=300 optim.warmup=50 ckpt_every=100 \
  log.wandb=disabled out_dir=runs/abl_288 'data.size=[288,288]' > runs/abl_288.log 2>&1
scripts/eval_dev.sh runs/abl_288/checkpoint.pt outputs/dev_abl_288 > results/dev_abl_288.txt 2>&1
