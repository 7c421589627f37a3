"""Train a model: python train.py --config configs/train/smoke.yaml [--resume CKPT] [key=value ...]

Multi-GPU / multi-node: torchrun --nproc_per_node N train.py --config ...
"""

import sys

from vos.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
