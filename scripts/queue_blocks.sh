#!/usr/bin/env bash
# Issue #8: swap each decoder.pixel_block into the default model, fine-tune it for the same number of steps
# (cycle_davis recipe, 100 steps, lr 1e-4) and score it on DAVIS-2016 dev. `conv` (the shipped block) gets
# the same fine-tune as the control row. Results: results/blocks/<block>.txt
# The README's rows used the previous default (59.1 J&F), 224-px crops:
#   git show 06656fd:checkpoints/default.pt > prev_default.pt && INIT=prev_default.pt scripts/queue_blocks.sh
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p results/blocks
for block in ${BLOCKS:-conv deform none dense interlaced efficient linear criss_cross salient axial_channelized squeeze}; do
  $PY train.py --config configs/train/cycle_davis.yaml init_from=${INIT:-checkpoints/default.pt} model.decoder.pixel_block=$block 'data.size=[224,224]' \
    optim.steps=100 optim.warmup=10 optim.lr=1e-4 ckpt_every=50 log.wandb=disabled out_dir=runs/block_$block \
    > runs/block_$block.log 2>&1 || { echo "$block: training failed" > results/blocks/$block.txt; continue; }
  scripts/eval_dev.sh runs/block_$block/checkpoint.pt outputs/dev_block_$block > results/blocks/$block.txt 2>&1
done
echo done > results/blocks/queue_done
