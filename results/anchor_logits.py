"""Does the given frame's view keep the crossing composite's ids apart? Descriptor logits from the whole memory
against those from the given frame's descriptors alone (bmx-bumps+swing+rhino).

    python results/anchor_logits.py [RUN]     (RUN: a run under runs/, default mnoise)

Runs the Tracker as `python -m vos.experiment composites_RUN` does (fp32, window 3, the given frame kept) and, every
3rd frame, inside each object's true pixels at stride 4, prints the mean logits of objects 1 / 2 / 3 (the BMX rider,
the swing girl, the rhino) decoded from every stored frame's descriptors (what the model uses: the max over frames),
then decoded from the given frame's descriptors alone (the memory's first entry), then the final probabilities of
1 / 2 / 3. Needs data/val10-composites (python -m vos.data.composites) and runs/RUN.
"""
import sys

import numpy as np
import torch
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
        rec["all"] = m.decode(feats, memory, valid).float()
        rec["given"] = m.decode(feats, memory[:, :1], valid[:, :1]).float()
    return predict(feats, memory, valid, *a, **k)


m.predict = _predict
src = open_frames(f"{root}JPEGImages/480p/{seq}", short_side=288)
H, W = src.size
tracker = Tracker([m], window=3, locality=0)
gt0 = np.asarray(Image.open(f"{root}Annotations/480p/{seq}/00000.png").resize((W, H), Image.NEAREST))
k = 1 + m.num_bg
print(f"run {run}, fp32")
print("frame || in object o's pixels (o = 1, 2, 3): logits of 1 2 3 from all stored frames | from the given frame alone"
      " | probabilities of 1 2 3")
for t in range(len(src.names)):
    rec.clear()
    with torch.no_grad():
        tracker.step(src[t], {i: (gt0 == i).astype(np.float32) for i in (1, 2, 3)} if t == 0 else None)
    if "all" not in rec or t % 3:
        continue
    every, given = rec["all"][0, k:], rec["given"][0, k:]
    probs = tracker.last.probs[0, 1:].float()
    gt = np.asarray(Image.open(f"{root}Annotations/480p/{seq}/{t:05d}.png").resize(every.shape[::-1][:2], Image.NEAREST))
    cols = []
    for obj in (1, 2, 3):
        r = torch.from_numpy(gt == obj)
        if r.sum() < 3:
            cols.append(f"{'(absent)':^50}")
            continue
        cols.append(" ".join(f"{float(x[i][r].mean()):4.1f}" for x in (every, given) for i in range(3)) + " | " +
                    " ".join(f"{float(probs[i][r].mean()):.2f}" for i in range(3)))
    print(f"{t:5d} || " + " || ".join(cols), flush=True)
