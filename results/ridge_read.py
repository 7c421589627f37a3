"""A discriminative read of the given frame against the short-term path's top-k read: a ridge regression fit in closed
form on frame 0's stride-16 features (raw, or at unit norm, plus a constant) to its [background, objects] masks, applied
to every 5th frame (argmax over [background, objects]), against the path's top-k reads of frame 0's TRUE masks (its
learned keys by L2, and the features by cosine, as results/given_read.py), scored against the true masks at stride 16
as IoU. No tracking and no training: what the features offer such a read (short_term.given_ridge trains one).

    python results/ridge_read.py RUN     # runs/RUN/checkpoint.pt; prints val10 per video, composites per object

Needs ../shared/data (val10) and data/val10-composites (`python -m vos.data.composites`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from given_read import COMPOSITES, EVERY, ROOT, TOPK, VAL10, first_frame, frame  # noqa: E402

from vos.checkpoint import load_models  # noqa: E402
from vos.eval.metrics import jaccard  # noqa: E402
from vos.model.short_term import cosine_operands, l2_operands, topk_attention  # noqa: E402

LAMBDAS = (0.001, 0.003, 0.01, 0.1, 1.0)  # x the mean diagonal of X^T X


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """x (N, C), y (N, K) -> W (C + 1, K)."""
    x1 = F.pad(x, (0, 1), value=1.0)
    a = x1.T @ x1
    return torch.linalg.solve(a + lam * a.diagonal().mean() * torch.eye(len(a)), x1.T @ y)


def reads(model, root: Path, seq: str, objects) -> dict[str, np.ndarray]:
    n, f0, ids, at16, given = first_frame(model, root, seq, objects)
    ck = model.short_term.key_channels
    h, w = given.shape[-2:]
    feats = lambda f: F.avg_pool2d(f.f8.float(), 2)[0].flatten(1).T  # noqa: E731  (hw, C)
    unit = lambda x: F.normalize(x, dim=1)  # noqa: E731
    y = torch.cat([1 - given.sum(1, keepdim=True), given], 1)[0].flatten(1).T
    fits = {f"ridge {kind} {lam}": (ridge_fit(unit(feats(f0)) if kind == "unit" else feats(f0), y, lam), kind == "unit")
            for kind in ("raw", "unit") for lam in LAMBDAS}
    out = {"top-k L2 keys": [], "top-k cosine": [], **{k: [] for k in fits}}
    for t in range(EVERY, n, EVERY):
        x, a = frame(root, seq, t)
        f, truth = model.features(x), at16(a)
        tr = truth[0].numpy() > 0.5
        r_key = topk_attention(*l2_operands(f.key[:, :ck], f0.key[:, :ck]), given, TOPK)
        r_cos = topk_attention(*cosine_operands(F.avg_pool2d(f.f8, 2), F.avg_pool2d(f0.f8, 2)), given, TOPK)
        out["top-k L2 keys"].append(jaccard(tr, r_key[0].numpy() > 0.5))
        out["top-k cosine"].append(jaccard(tr, r_cos[0].numpy() > 0.5))
        x_t = feats(f)
        for k, (wt, is_unit) in fits.items():
            lab = (F.pad(unit(x_t) if is_unit else x_t, (0, 1), value=1.0) @ wt).T.reshape(-1, h, w).argmax(0).numpy()
            out[k].append(jaccard(tr, np.stack([lab == i + 1 for i in range(len(ids))])))
    return {k: np.mean(v, 0) for k, v in out.items()}


@torch.inference_mode()
def main(run: str) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    val10 = (ROOT / "configs/splits/davis2016_val10.txt").read_text().split()
    comps = sorted(p.name for p in (COMPOSITES / "JPEGImages/480p").iterdir())
    model = load_models(ROOT / "runs" / run / "checkpoint.pt", torch.device("cpu"))[0].eval()
    print(f"== {run}: reads of frame 0's true masks into every {EVERY}th frame, IoU at stride 16")
    for label, root, seqs, objects in (("val10", VAL10, val10, lambda a: [k for k in np.unique(a) if k]),
                                       ("composites", COMPOSITES, comps,
                                        lambda a: [k for k in np.unique(a) if k not in (0, 255)])):
        rows: dict[str, list] = {}
        for seq in seqs:
            r = reads(model, root, seq, objects)
            print(f"  {label} {seq}: " + " | ".join(f"{k} {' '.join(f'{x:.2f}' for x in v)}" for k, v in r.items()))
            for k, v in r.items():
                rows.setdefault(k, []).extend(v)
        print(f"  {label} mean over {len(rows['top-k cosine'])} objects: "
              + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in rows.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "swap")
