"""What the short-term path's given-frame read gives each object of the crossing composite (bmx-bumps+swing+rhino).

    python results/given_read_hubs.py [RUN]     (RUN: a run under runs/, default mnoise)

Reads frames 0 and 3 against frame 0 (the given frame) with the run's path keys (stride 16, fp32), the objects' true
masks as values, top-16 as the path does (vos.model.short_term.topk_attention), by the dot product and by the L2
affinity (`l2_operands`), and prints the mean read of objects 1 / 2 / 3 inside each object's true cells (> 0.5), and
the mean key norm inside each object at frame 0. Needs data/val10-composites (python -m vos.data.composites).
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vos.checkpoint import load_models
from vos.data.video import open_frames
from vos.model.short_term import l2_operands, topk_attention

run = sys.argv[1] if len(sys.argv) > 1 else "mnoise"
root, seq = "data/val10-composites/", "bmx-bumps+swing+rhino"
m = load_models(f"runs/{run}/checkpoint.pt", torch.device("cpu"))[0].eval()
src = open_frames(f"{root}JPEGImages/480p/{seq}", short_side=288)
H, W = src.size


def keys_and_masks(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t's path keys (1, Ck, h, w) and its true masks (1, 4, h, w: background, objects 1-3) at stride 16."""
    img = torch.from_numpy(np.array(src[t])).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        k = m.features(img).key
    gt = np.asarray(Image.open(f"{root}Annotations/480p/{seq}/{t:05d}.png").resize((W, H), Image.NEAREST))
    masks = torch.stack([torch.from_numpy((gt == i).astype(np.float32)) for i in range(4)])[None]
    masks = F.pad(masks, (0, k.shape[-1] * 16 - W, 0, k.shape[-2] * 16 - H))
    return k, F.avg_pool2d(masks, 16)


print(f"run {run} (trained with short_term.similarity={m.cfg.short_term.similarity}), fp32")
k0, m0 = keys_and_masks(0)
norm = k0[0].norm(dim=0)
print("frame 0, mean key norm in objects 1 / 2 / 3:", " / ".join(f"{norm[m0[0, i] > 0.5].mean():.2f}" for i in (1, 2, 3)))
for t in (0, 3):
    kt, mt = keys_and_masks(t)
    for name, (q, k) in (("dot", (kt, k0)), ("l2", l2_operands(kt, k0))):
        read = topk_attention(q, k, m0[:, 1:], 16)[0]
        cols = [" ".join(f"{float(read[j][mt[0, i] > 0.5].mean()):.2f}" for j in range(3)) for i in (1, 2, 3)]
        print(f"frame {t} read by {name:3s}: reads of 1 2 3 in object 1: {cols[0]} | in object 2: {cols[1]} | "
              f"in object 3: {cols[2]}")

# Every composite: the given frame read against itself, the share of each object's true cells (> 0.5) whose largest
# read is the object's own (the background's read counted too: one minus the objects')
print("every composite, frame 0 read against itself: share of each object's cells that read their own object most")
for seq in sorted(p.name for p in __import__("pathlib").Path(f"{root}JPEGImages/480p").iterdir()):
    src = open_frames(f"{root}JPEGImages/480p/{seq}", short_side=288)
    H, W = src.size
    k0, m0 = keys_and_masks(0)
    n = int(m0.shape[1]) - 1
    row = []
    for name, (q, k) in (("dot", (k0, k0)), ("l2", l2_operands(k0, k0))):
        read = topk_attention(q, k, m0[:, 1:], 16)[0]
        read = torch.cat([1 - read.sum(0, keepdim=True), read])
        own = [float((read.argmax(0)[m0[0, i] > 0.5] == i).float().mean()) for i in range(1, n + 1)
               if (m0[0, i] > 0.5).any()]
        row.append(f"{name} " + " ".join(f"{x:.2f}" for x in own))
    print(f"{seq:32s} {' | '.join(row)}")
