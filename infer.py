"""Segment every frame of a video from one annotated frame: `python infer.py --help` (vos/inference/cli.py)."""

import sys

from vos.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
