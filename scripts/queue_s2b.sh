#!/usr/bin/env bash
# Issue #7, second round (after scripts/queue_blocks.sh): frozen backbone, and 288-px training crops
# (the inference resolution), each with the default recipe otherwise (300 steps).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
A=(optim.steps=300 optim.warmup=50 ckpt_every=100 log.wandb=disabled)
while [ ! -e results/blocks/queue_done ]; do sleep 10; done
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_frozen model.freeze_backbone=true > runs/abl_frozen.log 2>&1
scripts/eval_dev.sh runs/abl_frozen/checkpoint.pt outputs/dev_abl_frozen > results/dev_abl_frozen.txt 2>&1
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_288 'data.size=[288,288]' > runs/abl_288.log 2>&1
scripts/eval_dev.sh runs/abl_288/checkpoint.pt outputs/dev_abl_288 > results/dev_abl_288.txt 2>&1
