#!/usr/bin/env bash
# The experiment queue of this session (run in the background after the main training run).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
while pgrep -f "configs/train/cycle_davis.yaml$" >/dev/null; do sleep 20; done
mkdir -p results
$PY -m vos.bench infer --video ../shared/data/videos/bear.mp4 --checkpoint runs/cycle_davis/checkpoint.pt > results/bench_infer_bear.txt 2>&1
$PY -m vos.bench infer --video ../shared/data/videos/bear.mp4 --checkpoint runs/cycle_davis/checkpoint.pt --loops 25 > results/bench_infer_long.txt 2>&1
scripts/eval_dev.sh runs/cycle_davis/checkpoint.pt outputs/dev_main > results/dev_main.txt 2>&1
A=(optim.steps=300 optim.warmup=50 ckpt_every=100 log.wandb=disabled)
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_static 'data.sources=[{kind: davis2016, root: ../shared/data/davis2016, split: train, regime: static, annotated: first, weight: 0.85}, {kind: synthetic, regime: static, length: 200, weight: 0.15}]' > runs/abl_static.log 2>&1
scripts/eval_dev.sh runs/abl_static/checkpoint.pt outputs/dev_abl_static > results/dev_abl_static.txt 2>&1
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_cycle > runs/abl_cycle.log 2>&1
scripts/eval_dev.sh runs/abl_cycle/checkpoint.pt outputs/dev_abl_cycle > results/dev_abl_cycle.txt 2>&1
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_detach cycles.detach_masks=true > runs/abl_detach.log 2>&1
scripts/eval_dev.sh runs/abl_detach/checkpoint.pt outputs/dev_abl_detach > results/dev_abl_detach.txt 2>&1
$PY train.py --config configs/train/dense.yaml "${A[@]}" out_dir=runs/abl_dense > runs/abl_dense.log 2>&1
scripts/eval_dev.sh runs/abl_dense/checkpoint.pt outputs/dev_abl_dense > results/dev_abl_dense.txt 2>&1
echo done > results/queue_done
