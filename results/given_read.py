"""How well the short-term path's given-frame read matches: frame 0's TRUE masks read into every 5th frame, by the
path's learned keys (L2, `similarity` l2_given) and by the cosine of the attention features (cosine_given), scored
against the true masks at the read's stride (16) as IoU at 0.5. No tracking: the read alone, what the path is given.

    python results/given_read.py RUN [RUN ...]     # runs/RUN/checkpoint.pt; prints val10 per video, composites per object

Needs ../shared/data (val10) and data/val10-composites (`python -m vos.data.composites`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vos.checkpoint import load_models
from vos.model.hodor import Features
from vos.eval.metrics import jaccard
from vos.model.short_term import cosine_operands, l2_operands, topk_attention

ROOT = Path(__file__).resolve().parents[1]
VAL10 = ROOT.parent / "shared/data/davis2016"
COMPOSITES = ROOT / "data/val10-composites"
TOPK, EVERY = 16, 5


def frame(root: Path, seq: str, t: int) -> tuple[torch.Tensor, np.ndarray]:
    img = np.array(Image.open(root / "JPEGImages/480p" / seq / f"{t:05d}.jpg").convert("RGB"))
    ann = np.array(Image.open(root / "Annotations/480p" / seq / f"{t:05d}.png"))
    return torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255, ann if ann.ndim == 2 else ann[..., 0]


def first_frame(model, root: Path, seq: str, objects) -> tuple[int, Features, list[int], Callable, torch.Tensor]:
    """A sequence's length, frame 0's features, its object ids, `at16` (an annotation -> the objects' masks at stride
    16 over the padded frame) and frame 0's masks at stride 16."""
    n = len(list((root / "JPEGImages/480p" / seq).glob("*.jpg")))
    x0, a0 = frame(root, seq, 0)
    f0 = model.features(x0)
    H, W = f0.f8.shape[-2] * 8, f0.f8.shape[-1] * 8
    ids = objects(a0)

    def at16(ann):
        m = torch.from_numpy(np.stack([ann == k for k in ids])).float()[None]
        return F.avg_pool2d(F.pad(m, (0, W - m.shape[-1], 0, H - m.shape[-2])), 16)

    return n, f0, ids, at16, at16(a0)


def reads(model, root: Path, seq: str, objects) -> dict[str, np.ndarray]:
    """Per way of matching: the mean IoU of each object's read over the sequence's every 5th frame."""
    n, f0, ids, at16, given = first_frame(model, root, seq, objects)
    ck = model.short_term.key_channels
    out = {"learned keys (L2)": [], "features (cosine)": []}
    for t in range(EVERY, n, EVERY):
        x, a = frame(root, seq, t)
        f, truth = model.features(x), at16(a)
        r_key = topk_attention(*l2_operands(f.key[:, :ck], f0.key[:, :ck]), given, TOPK)
        r_cos = topk_attention(*cosine_operands(F.avg_pool2d(f.f8, 2), F.avg_pool2d(f0.f8, 2)), given, TOPK)
        for name, r in zip(out, (r_key, r_cos)):
            out[name].append(jaccard(truth[0].numpy() > 0.5, r[0].numpy() > 0.5))  # per object
    return {k: np.mean(v, 0) for k, v in out.items()}


@torch.inference_mode()
def main(runs: list[str]) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    val10 = (ROOT / "configs/splits/davis2016_val10.txt").read_text().split()
    comps = sorted(p.name for p in (COMPOSITES / "JPEGImages/480p").iterdir())
    for run in runs:
        model = load_models(ROOT / "runs" / run / "checkpoint.pt", torch.device("cpu"))[0].eval()
        print(f"== {run}: the given read's IoU at stride 16, top-{TOPK}, frame 0 read into every {EVERY}th frame")
        for label, root, seqs, objects in (("val10", VAL10, val10, lambda a: [k for k in np.unique(a) if k]),
                                           ("composites", COMPOSITES, comps,
                                            lambda a: [k for k in np.unique(a) if k not in (0, 255)])):
            rows = {}
            for seq in seqs:
                r = reads(model, root, seq, objects)
                print(f"  {label} {seq}: " + " | ".join(f"{k} {' '.join(f'{x:.2f}' for x in v)}" for k, v in r.items()))
                for k, v in r.items():
                    rows.setdefault(k, []).extend(v)
            a, b = (np.array(v) for v in rows.values())
            print(f"  {label} mean over {len(a)} objects: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in rows.items())
                  + f"; cosine better for {int((b > a).sum())} of {len(a)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["cosg"])
