"""What the crossing composite's diagnostic scripts share (anchor_logits.py, crossing_logits.py, decoder_keys.py):
bmx-bumps+swing+rhino (1 the BMX rider, 2 the swing girl, 3 the rhino pasted in front of both), run frame by frame
by the Tracker as `python -m vos.experiment composites_RUN` does (fp32, short side 288, window 3, no locality rule).
Needs data/val10-composites (python -m vos.data.composites) and runs/RUN.
"""
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from vos.checkpoint import load_models
from vos.data.video import open_frames
from vos.inference.tracker import Tracker
from vos.model.hodor import HODOR

ROOT, SEQ = "data/val10-composites/", "bmx-bumps+swing+rhino"


def model(run: str) -> HODOR:
    """The model of runs/RUN, on the CPU."""
    return load_models(f"runs/{run}/checkpoint.pt", torch.device("cpu"))[0]


def truth(t: int, hw: tuple[int, int]) -> np.ndarray:
    """Frame t's object ids (h, w), resized to hw by nearest neighbour."""
    return np.asarray(Image.open(f"{ROOT}Annotations/480p/{SEQ}/{t:05d}.png").resize(hw[::-1], Image.NEAREST))


def track(m: HODOR, frames: int | None = None,
          read: Callable[[int, tuple[int, int]], np.ndarray] | None = None) -> Iterator[tuple[int, Tracker]]:
    """Steps a Tracker over the first `frames` frames (all: None), the objects of frame 0 given there; yields (t,
    tracker) after each frame. read(t, (H, W)): the frame as an RGB array (default: vos.data.video's reader)."""
    src = open_frames(f"{ROOT}JPEGImages/480p/{SEQ}", short_side=288)
    hw = src.size
    tracker = Tracker([m], window=3, locality=0)
    gt0 = truth(0, hw)
    ids = [int(i) for i in np.unique(gt0) if i]
    for t in range(len(src.names) if frames is None else frames):
        with torch.no_grad():
            tracker.step(read(t, hw) if read else src[t],
                         {i: (gt0 == i).astype(np.float32) for i in ids} if t == 0 else None)
        yield t, tracker


def record_logits_and_offsets(m: HODOR) -> dict[str, torch.Tensor]:
    """Wraps m's decoder and short-term path so that each frame leaves, in the returned dict, "lg": the logits from
    the descriptors alone (B, 1 + Qb + I, H/4, W/4) and "off": the path's offsets (B, I, h, w), both fp32."""
    rec: dict[str, torch.Tensor] = {}
    decode, carry = m._decode, m.short_term.forward

    def _decode(*a, **k):
        out = decode(*a, **k)
        rec["lg"] = out[0].float()
        return out

    def _carry(*a, **k):
        out = carry(*a, **k)
        rec["off"] = out.float()
        return out

    m._decode, m.short_term.forward = _decode, _carry
    return rec


def record_at_predict(m: HODOR, what: Callable[..., dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Wraps m.predict so that each frame decoded from a memory leaves what(feats, memory, memory_valid) in the
    returned dict (frame 0, decoded from nothing, leaves nothing)."""
    rec: dict[str, torch.Tensor] = {}
    predict = m.predict

    def _predict(feats, memory, valid, *a, **k):
        if memory is not None:
            rec.update(what(feats, memory, valid))
        return predict(feats, memory, valid, *a, **k)

    m.predict = _predict
    return rec


def row(t: int, gt: np.ndarray, cell: Callable[[torch.Tensor], str], width: int) -> str:
    """One printed line for frame t: cell(pixels) for objects 1, 2, 3 (pixels: a bool mask of the object's true
    pixels in gt), "(absent)" centred in `width` for an object with fewer than 3 of them."""
    cols = []
    for obj in (1, 2, 3):
        r = torch.from_numpy(gt == obj)
        cols.append(cell(r) if r.sum() >= 3 else f"{'(absent)':^{width}}")
    return f"{t:5d} || " + " || ".join(cols)
