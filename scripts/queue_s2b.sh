#!/usr/bin/env bash
# After scripts/queue_blocks.sh: 480p speed of each pixel block (#8); then issue #7: the default recipe
# (300 steps) with a frozen backbone.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
A=(optim.steps=300 optim.warmup=50 ckpt_every=100 log.wandb=disabled "data.size=[224,224]")
while [ ! -e results/blocks/queue_done ]; do sleep 10; done
for c in runs/block_*/checkpoint.pt; do  # issue #8: 480p inference speed with each pixel block
  b=$(basename "$(dirname "$c")"); b=${b#block_}
  $PY -m vos.bench infer --video ../shared/data/videos/bear.mp4 --checkpoint "$c" > results/blocks/bench_$b.txt 2>&1
done
$PY train.py --config configs/train/cycle_davis.yaml "${A[@]}" out_dir=runs/abl_frozen model.freeze_backbone=true > runs/abl_frozen.log 2>&1
scripts/eval_dev.sh runs/abl_frozen/checkpoint.pt outputs/dev_abl_frozen > results/dev_abl_frozen.txt 2>&1
