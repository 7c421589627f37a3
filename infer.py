"""Segment every frame of a video from one annotated frame.

  python infer.py --input video.mp4 --mask first_frame.png --out outputs/ [--overlay]
  python infer.py --input frames/ --masks sparse_masks/ --out outputs/
  python infer.py --dataset-root DAVIS --layout davis2017 --split val --out outputs/
  torchrun --nproc_per_node 2 infer.py --dataset-root ... (sequences are sharded across processes)

Outputs: <out>/<sequence>/<frame>.png palette masks (ids and palette of the input annotation).
--method copy|flow runs a baseline through the same pipeline.
"""

import sys

from vos.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
