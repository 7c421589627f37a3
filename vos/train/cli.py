"""The train.py command line."""

USAGE = """Train a model: python train.py --config configs/train/smoke.yaml [--resume CKPT] [key=value ...]

Multi-GPU / multi-node: torchrun --nproc_per_node N train.py --config ...
"""

import argparse
import sys

from vos.config import TrainConfig, load_config
from vos.utils import VosError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="train.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a training YAML under configs/train/")
    ap.add_argument("--resume", help="continue exactly from this checkpoint")
    ap.add_argument("--stop-after", type=int, help="checkpoint and stop after this many steps (continue with --resume)")
    ap.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. optim.lr=3e-4)")
    a = ap.parse_args(argv)
    try:
        from vos.train.loop import train

        cfg = load_config(TrainConfig, a.config, a.overrides)
        path = train(cfg, a.resume, a.stop_after)
    except VosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint: {path}")
    return 0

