"""Which part of the step paints a video's object where it is not: a run's Tracker (window 3, no adaptation, no
locality rule, fp32) on one val10 video, frame 0 given; per frame the ground truth's area (full size), the object's
stride-4 pixels above 0.5 in the final probabilities, and those from the descriptors alone (`StepOutput.appearance`:
the decode before the short-term path's offsets), and the presence logit where the model has one
(`model.decoder.presence`; its log-sigmoid is added to the object's logits).

    python results/absent_source.py RUN SEQ     # runs/RUN/checkpoint.pt, e.g. swap bmx-bumps

Needs ../shared/data (DAVIS-2016).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vos.checkpoint import load_models
from vos.inference.tracker import Tracker
from vos.model.hodor import logits_to_probs

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT.parent / "shared/data/davis2016"


@torch.inference_mode()
def main(run: str, seq: str) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_models(ROOT / "runs" / run / "checkpoint.pt", torch.device("cpu"))[0].eval()
    recorded = {}
    predict = model.predict

    def recording(*args, **kwargs):
        out = predict(*args, **kwargs)
        recorded["logits"] = out[3]
        return out

    model.predict = recording
    tracker = Tracker([model], window=3)
    n = len(list((DAVIS / "JPEGImages/480p" / seq).glob("*.jpg")))
    print(f"== {run} {seq}: frame, truth's area, object pixels at stride 4 (final | descriptors alone) [presence logit]")
    rows = []
    for t in range(n):
        img = np.array(Image.open(DAVIS / "JPEGImages/480p" / seq / f"{t:05d}.jpg").convert("RGB"))
        truth = np.array(Image.open(DAVIS / "Annotations/480p" / seq / f"{t:05d}.png").convert("L")) > 0
        tracker.step(img, {1: truth.astype(np.uint8)} if t == 0 else None)
        if t == 0:
            continue
        final = int((tracker.last.probs[0, 1] > 0.5).sum())
        alone = int((logits_to_probs(recorded["logits"], model.num_bg)[0, 1] > 0.5).sum())
        rows.append((int(truth.sum()), final, alone))
        presence = tracker.last.presence
        score = "" if presence is None else f" [{float(presence[0, 0]):5.2f}]"
        print(f"  {t:3d} {rows[-1][0]:6d} {final:5d} | {alone:5d}{score}")
    empty = [r for r in rows if r[0] == 0]
    if empty:
        print(f"  frames without the object: {len(empty)}; object pixels there, final {np.mean([r[1] for r in empty]):.0f}"
              f" | descriptors alone {np.mean([r[2] for r in empty]):.0f} (per frame, stride 4)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
