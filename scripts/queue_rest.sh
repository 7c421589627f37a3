#!/usr/bin/env bash
# The rest of this session's experiments, in priority order (replaces queue.sh/queue2.sh/queue3.sh after
# the static-only ablation had started): ablations, inference-time choices, training benchmarks.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
C=runs/cycle_davis/checkpoint.pt
A=(optim.steps=300 optim.warmup=50 ckpt_every=100 log.wandb=disabled "data.size=[224,224]")
while pgrep -f "out_dir=runs/abl_static" >/dev/null; do sleep 10; done
scripts/eval_dev.sh runs/abl_static/checkpoint.pt outputs/dev_abl_static > results/dev_abl_static.txt 2>&1
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_cycle > runs/abl_cycle.log 2>&1
scripts/eval_dev.sh runs/abl_cycle/checkpoint.pt outputs/dev_abl_cycle > results/dev_abl_cycle.txt 2>&1
scripts/eval_dev.sh $C outputs/dev_w7_anchor_false window=7 anchor_first=false > results/dev_w7_anchor_false.txt 2>&1
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_detach cycles.detach_masks=true > runs/abl_detach.log 2>&1
scripts/eval_dev.sh runs/abl_detach/checkpoint.pt outputs/dev_abl_detach > results/dev_abl_detach.txt 2>&1
scripts/eval_dev.sh $C outputs/dev_w3_anchor_true window=3 > results/dev_w3_anchor_true.txt 2>&1
scripts/eval_dev.sh $C outputs/dev_w15_anchor_true window=15 > results/dev_w15_anchor_true.txt 2>&1
$PY -m vos.bench train --config configs/train/smoke.yaml --steps 30 > results/bench_train_smoke.txt 2>&1
$PY -m vos.bench train --config configs/train/cycle_davis.yaml --steps 20 > results/bench_train_cycle.txt 2>&1
scripts/eval_dev.sh $C outputs/dev_short240 short_side=240 > results/dev_short240.txt 2>&1
$PY train.py --config configs/train/dense.yaml "${A[@]}" out_dir=runs/abl_dense > runs/abl_dense.log 2>&1
scripts/eval_dev.sh runs/abl_dense/checkpoint.pt outputs/dev_abl_dense > results/dev_abl_dense.txt 2>&1
echo done > results/queue_done
