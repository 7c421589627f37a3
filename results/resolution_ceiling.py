"""What the output's stride alone costs: each val10 video's ground truth (every 5th frame from frame 1) area-averaged
to stride S of the internal frame (short side 288, as inference runs), bilinearly upsampled back, thresholded at 0.5,
and scored against itself (J and F of vos.eval). Used for RESULTS.md ("The output at stride 2").

    python results/resolution_ceiling.py > results/resolution_ceiling.txt   (data: $VOS_DATA, else ../shared/data)
"""
import glob
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vos.eval.metrics import f_measure, jaccard

root = os.path.join(os.environ.get("VOS_DATA", "../shared/data"), "davis2016", "Annotations", "480p")
seqs = [s.strip() for s in open("configs/splits/davis2016_val10.txt") if s.strip()]
for stride in (4, 2):
    js, fs = [], []
    for seq in seqs:
        j, f = [], []
        for path in sorted(glob.glob(os.path.join(root, seq, "*.png")))[1::5]:
            gt = np.asarray(Image.open(path)) > 0
            H, W = gt.shape
            t = torch.from_numpy(gt.astype(np.float32))[None, None]
            low = F.interpolate(t, size=(round(288 / stride), round(288 * W / H / stride)), mode="area")
            back = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
            j.append(jaccard(gt[None], back[None]).mean())
            f.append(f_measure(gt, back))
        js.append(np.mean(j))
        fs.append(np.mean(f))
        print(f"stride {stride} {seq}: J {100 * js[-1]:.1f} F {100 * fs[-1]:.1f}")
    print(f"stride {stride} mean: J {100 * np.mean(js):.1f} F {100 * np.mean(fs):.1f} "
          f"J&F {50 * (np.mean(js) + np.mean(fs)):.1f}")
