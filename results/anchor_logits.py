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

import torch

from crossing import model, record_at_predict, row, track, truth

run = sys.argv[1] if len(sys.argv) > 1 else "mnoise"
m = model(run)
rec = record_at_predict(m, lambda feats, memory, valid: {
    "all": m.decode(feats, memory, valid).float(), "given": m.decode(feats, memory[:, :1], valid[:, :1]).float()})
k = 1 + m.num_bg
print(f"run {run}, fp32")
print("frame || in object o's pixels (o = 1, 2, 3): logits of 1 2 3 from all stored frames | from the given frame alone"
      " | probabilities of 1 2 3")
for t, tracker in track(m):
    got = dict(rec)
    rec.clear()
    if "all" not in got or t % 3:
        continue
    every, given = got["all"][0, k:], got["given"][0, k:]
    probs = tracker.last.probs[0, 1:].float()
    gt = truth(t, every.shape[-2:])
    print(row(t, gt, lambda r: " ".join(f"{float(x[i][r].mean()):4.1f}" for x in (every, given) for i in range(3)) +
              " | " + " ".join(f"{float(probs[i][r].mean()):.2f}" for i in range(3)), 50), flush=True)
