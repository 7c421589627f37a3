"""Train a model: `python train.py --help` (vos/train/cli.py)."""

import sys

from vos.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
