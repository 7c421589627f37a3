#!/usr/bin/env bash
# Inference-time ablations of the default model (window, anchor, internal resolution); after queue.sh.
set -u
cd "$(dirname "$0")/.."
while [ ! -f results/queue_done ]; do sleep 20; done
C=runs/cycle_davis/checkpoint.pt
for w in 3 7 15; do
  for a in true false; do
    scripts/eval_dev.sh $C outputs/dev_w${w}_anchor_$a window=$w anchor_first=$a > results/dev_w${w}_anchor_$a.txt 2>&1
  done
done
for s in 240 360; do
  scripts/eval_dev.sh $C outputs/dev_short$s short_side=$s > results/dev_short$s.txt 2>&1
done
scripts/eval_dev.sh flow outputs/dev_flow > results/dev_flow.txt 2>&1
scripts/eval_dev.sh copy outputs/dev_copy > results/dev_copy.txt 2>&1
echo done > results/queue2_done
