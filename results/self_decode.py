"""Can an object's descriptors give back the mask they were made from? The given frame decoded from its own
descriptors, for every object of the multi-object validation composites.

    python results/self_decode.py [RUN] [--frame1] [--root DIR]     (RUN: a run under runs/ or a .pt; default mnoise)

For each composite (data/val10-composites, frames at short side 288 as the Tracker reads them, fp32): encode frame 0
from its true masks (HODOR.encode), decode frame 0 from those descriptors alone (HODOR.decode: no short-term path, no
other frame; --frame1: decode frame 1 instead, what the first propagated frame sees before the path's offsets), and
score each object's argmax mask against the truth at stride 4 (IoU). Prints one line per object: IoU, area (share
of the frame), `near` (the cosine of its descriptor with the nearest other object's descriptor of the same frame: how
alike the model finds them; then the same for the features and the lateral below) and the mean logit of every object
of the video inside its true pixels; then the correlation of IoU with log area, the IoU by size, the same for `near`,
and `near` for the stride-8 features averaged in the mask (what the encoder starts from), for the FPN's stride-8
lateral alone (the backbone's stride-8 map before the top-down sum adds the coarser maps to it) and for the decoder's
stride-4 mask embedding averaged in the mask.
--root: another DAVIS-2017 layout, e.g. the training composites data/davis2016_train20-pseudo_train20-60x25 (their
masks are the teacher's) or merged photo clips (results/photo_clips.py).
--alpha-floor A (diagnosis only): raise the encoder's soft-mask alphas to at least A, so no head reads outside the mask.
Needs data/val10-composites (python -m vos.data.composites) and runs/RUN.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vos.checkpoint import load_models
from vos.data.video import open_frames
from vos.model.hodor import logits_to_probs

args = sys.argv[1:]
root = Path(args.pop(args.index("--root") + 1) if "--root" in args else "data/val10-composites")
alpha_floor = float(args.pop(args.index("--alpha-floor") + 1)) if "--alpha-floor" in args else None
run = next((a for a in args if not a.startswith("--")), "mnoise")
t1 = 1 if "--frame1" in args else 0
m = load_models(run if run.endswith(".pt") else f"runs/{run}/checkpoint.pt", torch.device("cpu"))[0].eval()
if alpha_floor is not None:  # diagnosis only: every soft-masked head of the encoder reads (nearly) only inside its mask
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("alpha"):
                p.clamp_(min=alpha_floor)


def truth(seq: str, t: int, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(root / f"Annotations/480p/{seq}/{t:05d}.png").resize(hw[::-1], Image.NEAREST))


def nearest(x: torch.Tensor) -> list[float]:
    """Per row, the cosine with the most similar other row."""
    x = F.normalize(x.float(), dim=-1)
    return (x @ x.T).fill_diagonal_(-1).max(1).values.tolist()


def mask_means(masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """(I, C): each map (C, h, w) averaged over the cells where a mask (I, h, w) is above 0.5."""
    hard = (masks.flatten(1) > 0.5).float()
    return hard @ maps.flatten(1).T.float() / hard.sum(-1, keepdim=True).clamp(min=1)


def residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y less its least-squares fit on x."""
    A = np.c_[x, np.ones_like(x)]
    return y - A @ np.linalg.lstsq(A, y, rcond=None)[0]


print(f"run {run}, fp32: frame {t1} decoded from frame 0's descriptors alone")
print("IoU  | area % | near (descriptor, features, lateral) | object | mean logits of the video's objects in its true pixels (own one starred)")
rows = []
lateral = {}  # the FPN's stride-8 lateral alone, before the top-down sum adds the coarser maps to it


def keep_lateral(module, inputs, output):  # m.features computes the lateral; keep it instead of a second pass
    lateral["last"] = output


m.fpn.lat[0].register_forward_hook(keep_lateral)
for seq in sorted(p.name for p in (root / "JPEGImages/480p").iterdir()):
    src = open_frames(root / f"JPEGImages/480p/{seq}", short_side=288)
    hw = src.size
    gt0 = truth(seq, 0, hw)
    ids = [int(i) for i in np.unique(gt0) if i]
    img = torch.from_numpy(np.array(src[0])).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        f0 = m.features(img)
        lat0 = lateral["last"]
        masks = torch.stack([torch.from_numpy((gt0 == i).astype(np.float32)) for i in ids])[None]
        masks_s4 = m.masks_to_s4(masks, f0)
        desc = m.encode(f0, masks_s4)
        ft = f0 if t1 == 0 else m.features(torch.from_numpy(np.array(src[t1])).permute(2, 0, 1).float().div(255)[None])
        logits, emb, _ = m._decode(ft, desc[:, None], torch.ones(desc.shape[:2], dtype=torch.bool)[:, None])
    h4, w4 = -(-hw[0] // 4), -(-hw[1] // 4)
    labels = logits_to_probs(logits, m.num_bg)[0, :, :h4, :w4].argmax(0).numpy()
    obj_logits = logits[0, 1 + m.num_bg:, :h4, :w4]
    gt = truth(seq, t1, (h4, w4))
    near = nearest(desc[0, m.num_bg:])
    near_f = nearest(mask_means(F.avg_pool2d(masks_s4, 2)[0], f0.f8[0]))  # the cells the encoder's mean starts from
    near_e = nearest(mask_means(masks_s4[0], emb[0]))
    near_l = nearest(mask_means(F.avg_pool2d(masks_s4, 2)[0], lat0[0]))
    for j, i in enumerate(ids):
        g, p = gt == i, labels == j + 1
        iou = (g & p).sum() / max((g | p).sum(), 1)
        mean = [float(obj_logits[k][torch.from_numpy(g)].mean()) if g.any() else float("nan") for k in range(len(ids))]
        rows.append((iou, g.mean() * 100, near[j], near_f[j], near_e[j], near_l[j]))
        print(f"{iou:.2f} | {g.mean() * 100:5.2f} | {near[j]:4.2f} {near_f[j]:4.2f} {near_l[j]:4.2f} | {seq}_{i:<3d}| " +
              " ".join(f"{v:5.1f}{'*' if k == j else ' '}" for k, v in enumerate(mean)), flush=True)
iou, area, near, near_f, near_e, near_l = np.array(rows).T
print(f"mean IoU {iou.mean():.2f}; objects under 3 % of the frame {iou[area < 3].mean():.2f} ({(area < 3).sum()}), "
      f"the others {iou[area >= 3].mean():.2f}; corr(IoU, log area) {np.corrcoef(iou, np.log(area))[0, 1]:.2f}")
buckets = [(name, (area >= lo) & (area < hi)) for name, lo, hi in
           (("< 1", 0, 1), ("1-3", 1, 3), ("3-10", 3, 10), (">= 10", 10, np.inf))]
print("IoU by share of the frame: " +
      "; ".join(f"{name} % {iou[b].mean():.2f} ({b.sum()})" for name, b in buckets if b.any()))
partial = np.corrcoef(residual(iou, np.log(area)), residual(near, np.log(area)))[0, 1]
print(f"near (cosine of an object's descriptor with the nearest other object's): mean {near.mean():.2f}; "
      f"corr(IoU, near) {np.corrcoef(iou, near)[0, 1]:.2f}, at equal log area {partial:.2f}; "
      f"IoU where near >= 0.5: {iou[near >= 0.5].mean():.2f} ({(near >= 0.5).sum()}), "
      f"below: {iou[near < 0.5].mean():.2f} ({(near < 0.5).sum()})")
print("the same for the stride-8 features averaged in the mask (what the encoder starts from): "
      f"mean {near_f.mean():.2f}; corr with near {np.corrcoef(near, near_f)[0, 1]:.2f}")
print("the same for the FPN's stride-8 lateral alone, before the top-down sum: "
      f"mean {near_l.mean():.2f}; corr with near {np.corrcoef(near, near_l)[0, 1]:.2f}")
print(f"the same for the decoder's stride-4 mask embedding averaged in the mask: mean {near_e.mean():.2f}; "
      f"corr with near {np.corrcoef(near, near_e)[0, 1]:.2f}; corr(IoU, it) {np.corrcoef(iou, near_e)[0, 1]:.2f}")
