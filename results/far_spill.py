"""Where the descriptors paint a video's object far from it, does the given-frame read say otherwise? A checkpoint's
first model on every val10 video, no tracking: frame 0's true mask is encoded into descriptors and decoded alone
(`HODOR.encode` / `decode`, no short-term offsets) into every 5th frame, and the short-term path's given-frame read
(`ShortTermPath.read_given`, top-k) reads frame 0's true mask into the same frames. At stride 16, per video: the read's
mean on the object's true cells, the cells the descriptors paint (> 0.5) more than two cells away from the truth, and
the read's mean on those cells. If the read is low where the descriptors spill, the path has what it needs to veto the
spill; if it is as high there as on the object, the features both read from do not tell the two apart.

    python results/far_spill.py CHECKPOINT.pt      # e.g. checkpoints/default.pt; output in results/far_spill.txt

Needs ../shared/data (DAVIS-2016).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation

from given_read import VAL10, frame
from vos.checkpoint import load_models
from vos.model.hodor import logits_to_probs
from vos.model.short_term import LastFrame

ROOT = Path(__file__).resolve().parents[1]
EVERY = 5


@torch.inference_mode()
def video(model, seq: str) -> tuple[float, int, float]:
    n = len(list((VAL10 / "JPEGImages/480p" / seq).glob("*.jpg")))
    x0, a0 = frame(VAL10, seq, 0)
    f0 = model.features(x0)
    H, W = f0.f8.shape[-2] * 8, f0.f8.shape[-1] * 8

    def at(ann: np.ndarray, s: int) -> torch.Tensor:
        m = torch.from_numpy(ann > 0).float()[None, None]
        return F.avg_pool2d(F.pad(m, (0, W - m.shape[-1], 0, H - m.shape[-2])), s)

    m0 = at(a0, 4)
    given = LastFrame(f0.key, model.short_term.masks(torch.cat([1 - m0, m0], 1)))
    desc = model.encode(f0, m0)[:, None]
    valid = torch.ones(desc.shape[:3], dtype=torch.bool)
    on_obj, far_read, far_cells = [], [], 0
    for t in range(EVERY, n, EVERY):
        x, a = frame(VAL10, seq, t)
        f = model.features(x)
        read = model.short_term.read_given(f.key, given, 1)[0, 0].numpy()
        probs = F.avg_pool2d(logits_to_probs(model.decode(f, desc, valid), model.num_bg)[:, 1:2], 4)[0, 0].numpy()
        truth = at(a, 16)[0, 0].numpy() > 0.5
        far = (probs > 0.5) & ~binary_dilation(truth, iterations=2)
        on_obj.extend(read[truth])
        far_read.extend(read[far])
        far_cells += int(far.sum())
    return float(np.mean(on_obj)), far_cells, float(np.mean(far_read)) if far_read else float("nan")


def main(checkpoint: str) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_models(Path(checkpoint), torch.device("cpu"))[0].eval()
    print(f"== {checkpoint}: every {EVERY}th frame, stride 16; the read's mean on the object | far cells the "
          f"descriptors paint | the read's mean there")
    for seq in (ROOT / "configs/splits/davis2016_val10.txt").read_text().split():
        obj, cells, there = video(model, seq)
        print(f"  {seq:12s} {obj:.2f} | {cells:4d} | {there:.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
