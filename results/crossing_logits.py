"""Who decides the rider's id in the crossing composite (bmx-bumps+swing+rhino), frame by frame.

    python results/crossing_logits.py [RUN] [--pil]     (RUN: a run under runs/, default mnoise)

Runs the Tracker as `python -m vos.experiment composites_RUN` does (fp32 here; frames read by vos.data.video at short
side 288, cv2 area resize; --pil: PIL bilinear resize instead) and prints, inside the rider's (object 1) and the swing
girl's (object 2) true pixels at stride 4: the mean logits of objects 1 / 2 decoded from the descriptors alone, the
short-term path's mean offsets for 1 / 2 (vos.model.short_term: the local carry and the given-frame read), and the
mean final probabilities of objects 1 / 2 / 3 (3: the rhino, pasted in front of both). Needs data/val10-composites
(python -m vos.data.composites) and runs/RUN.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from crossing import ROOT, SEQ, model, record_logits_and_offsets, track, truth

run = next((a for a in sys.argv[1:] if not a.startswith("--")), "mnoise")
pil = "--pil" in sys.argv
m = model(run)
rec = record_logits_and_offsets(m)


def read_pil(t: int, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(f"{ROOT}JPEGImages/480p/{SEQ}/{t:05d}.jpg").convert("RGB").resize(hw[::-1]))


k = 1 + m.num_bg
print(f"run {run}, frames resized by {'PIL bilinear' if pil else 'vos.data.video (cv2 area)'}, fp32")
print("frame || in the rider: descriptor logits 1 / 2 | offsets 1 / 2 | probs 1 / 2 / 3 || in the girl: the same")
for t, tracker in track(m, read=read_pil if pil else None):
    got = dict(rec)
    rec.clear()
    if "lg" not in got:
        continue
    lg = got["lg"][0, k:]
    off = F.interpolate(got["off"], size=lg.shape[-2:], mode="bilinear", align_corners=False)[0]
    probs = tracker.last.probs[0, 1:].float()
    gt = truth(t, lg.shape[-2:])
    cols = []
    for obj in (1, 2):
        r = torch.from_numpy(gt == obj)
        if not r.any():
            cols.append(f"{'(absent)':^45}")
            continue
        mean = [float(x[i][r].mean()) for x in (lg, off) for i in (0, 1)]
        mean += [float(probs[i][r].mean()) for i in (0, 1, 2)]
        cols.append("{:5.1f} {:5.1f} | {:5.1f} {:5.1f} | {:.2f} {:.2f} {:.2f}".format(*mean))
    print(f"{t:5d} || " + " || ".join(cols), flush=True)
