"""Per-frame output writers of infer.py: palette PNGs, soft probabilities, an overlay mp4.

Each has `write(t, ids, object_ids, probs)`; every file appears under its final name only when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vos.data import open_frames, write_mask
from vos.data.video import Mp4Writer
from vos.utils import atomic_path


def overlay(frame: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colour = palette[ids]
    out = frame.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour[fg]
    return out.astype(np.uint8)


class PngWriter:
    """<dir>/<frame name>.png: palette masks with the input's ids and palette."""

    def __init__(self, folder: Path, names: list[str], palette: np.ndarray):
        self.folder, self.names, self.palette = folder, names, palette

    def write(self, t: int, ids: np.ndarray, object_ids: list[int], probs: torch.Tensor) -> None:
        write_mask(self.folder / f"{self.names[t]}.png", ids, self.palette)


class ProbsWriter:
    """<dir>/<frame name>.npz: `ids` (object ids) and `probs` (n, H, W) uint8 = probability * 255."""

    def __init__(self, folder: Path, names: list[str]):
        self.folder, self.names = folder, names
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, t: int, ids: np.ndarray, object_ids: list[int], probs: torch.Tensor) -> None:
        with atomic_path(self.folder / f"{self.names[t]}.npz") as tmp:
            np.savez_compressed(tmp, ids=np.array(object_ids),
                                probs=(probs[1:].clamp(0, 1) * 255).round().byte().cpu().numpy())


class OverlayWriter(Mp4Writer):
    """An mp4 of the input frames (native resolution) with the masks blended in. Frames come in order, so a
    video file is decoded once, sequentially (VideoFile's in-order path, not a second random-access reader)."""

    def __init__(self, path: Path, source: Path, fps: float, palette: np.ndarray):
        super().__init__(path, fps)
        self.frames, self.palette = open_frames(source), palette

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self.frames.close()

    def write(self, t: int, ids: np.ndarray, object_ids: list[int], probs: torch.Tensor) -> None:  # type: ignore[override]
        self.write_ids(t, ids)

    def write_ids(self, t: int, ids: np.ndarray) -> None:
        super().write(overlay(self.frames[t], ids, self.palette))
