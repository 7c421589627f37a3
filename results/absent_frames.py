"""What val10's frames without the object cost: for each video with such frames (ground truth empty), how many of
the DAVIS-scored frames (first and last excluded) they are, a run's J on them, and its J over the video were they
predicted empty.

    python results/absent_frames.py RUN [RUN ...]     # outputs/experiments/RUN (from python -m vos.experiment RUN)

Needs ../shared/data (DAVIS-2016 val10).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GT = ROOT.parent / "shared/data/davis2016/Annotations/480p"


def main(runs: list[str]) -> None:
    seqs = [s.strip() for s in open(ROOT / "configs/splits/davis2016_val10.txt") if s.strip()]
    for run in runs:
        print(f"== {run}")
        for seq in seqs:
            js, absent = [], []
            for f in sorted((GT / seq).glob("*.png"))[1:-1]:  # the DAVIS protocol scores neither first nor last
                g = np.array(Image.open(f).convert("L")) > 0
                p = np.array(Image.open(ROOT / "outputs/experiments" / run / seq / f.name)) > 0
                union = (g | p).sum()
                js.append((g & p).sum() / union if union else 1.0)
                absent.append(not g.any())
            j, a = np.array(js), np.array(absent)
            if a.any():
                print(f"  {seq}: {a.sum()} of {len(j)} frames without the object; J on them {j[a].mean():.2f}; "
                      f"the video's J {j.mean():.3f}, {np.where(a, 1.0, j).mean():.3f} were they predicted empty")


if __name__ == "__main__":
    main(sys.argv[1:])
