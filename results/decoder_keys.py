"""How the decoder's object keys meet the crossing composite's pixels (bmx-bumps+swing+rhino): norms and directions.

    python results/decoder_keys.py [RUN]     (RUN: a run under runs/, default mnoise)

Runs the Tracker as `python -m vos.experiment composites_RUN` does (fp32, window 3, the given frame kept) and decodes
frames 3, 30, 48, 51 and 54 from the given frame's descriptors alone. Prints the norms of the given frame's keys (the
decoder's `desc_proj` of each descriptor: background cells, then objects 1 / 2 / 3 = the BMX rider, the swing girl,
the rhino) and, inside each object's true pixels at stride 4, the mean norm of the mask embedding |e|, the mean logit
of objects 1 / 2 / 3 (k . e / sqrt(Cm), what the decoder uses) and their mean cosine (k . e / |k| |e|: the direction
alone). Needs data/val10-composites (python -m vos.data.composites) and runs/RUN.
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vos.checkpoint import load_models
from vos.data.video import open_frames
from vos.inference.tracker import Tracker

run = sys.argv[1] if len(sys.argv) > 1 else "mnoise"
root, seq = "data/val10-composites/", "bmx-bumps+swing+rhino"
m = load_models(f"runs/{run}/checkpoint.pt", torch.device("cpu"))[0]
rec = {}
predict = m.predict


def _predict(feats, memory, valid, *a, **k):
    if memory is not None:
        _, rec["e"], rec["k"] = (x.float() for x in m._decode(feats, memory[:, :1], valid[:, :1]))
    return predict(feats, memory, valid, *a, **k)


m.predict = _predict
src = open_frames(f"{root}JPEGImages/480p/{seq}", short_side=288)
H, W = src.size
tracker = Tracker([m], window=3, locality=0)
gt0 = np.asarray(Image.open(f"{root}Annotations/480p/{seq}/00000.png").resize((W, H), Image.NEAREST))
nb = m.num_bg
print(f"run {run}, fp32; from the given frame's descriptors alone")
for t in range(55):
    rec.clear()
    with torch.no_grad():
        tracker.step(src[t], {i: (gt0 == i).astype(np.float32) for i in (1, 2, 3)} if t == 0 else None)
    if t not in (3, 30, 48, 51, 54):
        continue
    e, k = rec["e"][0], rec["k"][0, 0]  # (Cm, h, w), (Q, Cm)
    if t == 3:
        print("key norms: background cells", " ".join(f"{x:.1f}" for x in k[:nb].norm(dim=-1).tolist()),
              "| objects 1 2 3:", " ".join(f"{x:.1f}" for x in k[nb:].norm(dim=-1).tolist()))
        print("frame || in object o's pixels (o = 1, 2, 3): |e| | logits of 1 2 3 | cosines of 1 2 3")
    logit = torch.einsum("qc,chw->qhw", k, e) / math.sqrt(k.shape[-1])
    cos = torch.einsum("qc,chw->qhw", F.normalize(k, dim=-1), F.normalize(e, dim=0))
    gt = np.asarray(Image.open(f"{root}Annotations/480p/{seq}/{t:05d}.png").resize(e.shape[::-1][:2], Image.NEAREST))
    cols = []
    for obj in (1, 2, 3):
        r = torch.from_numpy(gt == obj)
        if r.sum() < 3:
            cols.append(f"{'(absent)':^40}")
            continue
        cols.append(f"{float(e.norm(dim=0)[r].mean()):4.1f} | " +
                    " ".join(f"{float(logit[nb + i][r].mean()):4.1f}" for i in range(3)) + " | " +
                    " ".join(f"{float(cos[nb + i][r].mean()):5.2f}" for i in range(3)))
    print(f"{t:5d} || " + " || ".join(cols), flush=True)
