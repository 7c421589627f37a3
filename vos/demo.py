"""The README's first command: segment a generated sample video with the bundled default model.

Writes outputs/demo/sample.mp4 (a synthetic clip the repository may ship), its first-frame mask
outputs/demo/sample_00000.png, the per-frame masks outputs/demo/masks/sample/*.png and the overlay
outputs/demo/masks/sample_overlay.mp4, plus one overlay frame as outputs/demo/overlay_frame.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(out: str = "outputs/demo") -> int:
    from vos.inference.cli import main as infer_main
    from vos.data import VideoFile, write_mask
    from vos.data.synthetic import make_clip, write_mp4

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, masks = make_clip(2024, n_frames=48, size=(480, 854), n_objects=3, late_objects=0)
    write_mp4(out_dir / "sample.mp4", frames, fps=24)
    write_mask(out_dir / "sample_00000.png", masks[0])
    code = infer_main(["--input", str(out_dir / "sample.mp4"), "--mask", str(out_dir / "sample_00000.png"),
                       "--out", str(out_dir / "masks"), "--overlay"])
    if code == 0:
        overlay = VideoFile(out_dir / "masks" / "sample_overlay.mp4")
        Image.fromarray(np.asarray(overlay[len(overlay) * 3 // 4])).save(out_dir / "overlay_frame.png")
        print(f"overlay video: {out_dir / 'masks' / 'sample_overlay.mp4'}; a frame: {out_dir / 'overlay_frame.png'}")
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
