"""What takes a composite object in the first propagated frames: descriptor logits, short-term offsets, probabilities.

    python results/first_frames.py RUN SEQ OBJ     (e.g. mnoise rhino+mallard-fly+hike 2: the mallard)

Runs the Tracker on data/val10-composites/SEQ as `python -m vos.experiment composites_RUN` does (results/crossing.py)
and prints, for frames 1-5, inside object OBJ's true pixels at stride 4: the mean logits of every object decoded from
the descriptors alone, the largest background-cell logit, the catch-all logit, the short-term path's offsets of every
object, and the final probabilities (background, then the objects), then the object's pixel count.
"""
import sys

import torch
import torch.nn.functional as F

import crossing

run, crossing.SEQ, obj = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = crossing.model(run)
rec = crossing.record_logits_and_offsets(m)
k = 1 + m.num_bg
print(f"run {run}, {crossing.SEQ}, in object {obj}'s pixels: descriptor logits of the objects | largest background "
      "cell | catch-all | offsets of the objects | probabilities (background, objects) | pixels")
for t, tracker in crossing.track(m, frames=6):
    got = dict(rec)
    rec.clear()
    if "lg" not in got:
        continue
    lg = got["lg"][0]
    off = F.interpolate(got["off"], size=lg.shape[-2:], mode="bilinear", align_corners=False)[0]
    probs = tracker.last.probs[0].float()
    r = torch.from_numpy(crossing.truth(t, lg.shape[-2:]) == obj)
    means = lambda x: " ".join(f"{float(v[r].mean()):5.1f}" for v in x)
    print(f"{t} | {means(lg[k:])} | {float(lg[1:k].amax(0)[r].mean()):5.1f} | {float(lg[0][r].mean()):5.1f} | "
          f"{means(off)} | " + " ".join(f"{float(v[r].mean()):.2f}" for v in probs) + f" | {int(r.sum())}", flush=True)
