"""Segment every frame of a video from one annotated frame: `python infer.py --help` (vos/infer.py)."""

import sys

from vos.infer import main

if __name__ == "__main__":
    sys.exit(main())
