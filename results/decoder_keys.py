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

import torch
import torch.nn.functional as F

from crossing import model, record_at_predict, row, track, truth

run = sys.argv[1] if len(sys.argv) > 1 else "mnoise"
m = model(run)
rec = record_at_predict(m, lambda feats, memory, valid: dict(
    zip(("e", "k"), (x.float() for x in m._decode(feats, memory[:, :1], valid[:, :1])[1:]))))
nb = m.num_bg
print(f"run {run}, fp32; from the given frame's descriptors alone")
for t, _ in track(m, frames=55):
    if t not in (3, 30, 48, 51, 54):
        continue
    e, k = rec["e"][0], rec["k"][0, 0]  # (Cm, h, w), (Q, Cm)
    if t == 3:
        print("key norms: background cells", " ".join(f"{x:.1f}" for x in k[:nb].norm(dim=-1).tolist()),
              "| objects 1 2 3:", " ".join(f"{x:.1f}" for x in k[nb:].norm(dim=-1).tolist()))
        print("frame || in object o's pixels (o = 1, 2, 3): |e| | logits of 1 2 3 | cosines of 1 2 3")
    logit = torch.einsum("qc,chw->qhw", k, e) / math.sqrt(k.shape[-1])
    cos = torch.einsum("qc,chw->qhw", F.normalize(k, dim=-1), F.normalize(e, dim=0))
    gt = truth(t, e.shape[-2:])
    print(row(t, gt, lambda r: f"{float(e.norm(dim=0)[r].mean()):4.1f} | " +
              " ".join(f"{float(logit[nb + i][r].mean()):4.1f}" for i in range(3)) + " | " +
              " ".join(f"{float(cos[nb + i][r].mean()):5.2f}" for i in range(3)), 40), flush=True)
