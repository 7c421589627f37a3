"""The README's first command: segment a real clip shipped with the repository, starting from two boxes.

examples/bedroom.mp4 (200 frames, 960x540, from the SAM 2 repository, Apache-2.0): two children jumping on
a bed. The first mask is built from a box around each child on frame 0 (GrabCut), then propagated with the
bundled model. Writes outputs/demo/masks/bedroom/*.png, outputs/demo/masks/bedroom_overlay.mp4, the first
mask outputs/demo/masks/bedroom_prompt_00000.png and a strip of overlay frames outputs/demo/overlay_strip.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLIP = Path(__file__).resolve().parents[1] / "examples" / "bedroom.mp4"
BOXES = ["300,0,525,400", "140,130,300,410"]  # the girl (object 1) and the boy (object 2) on frame 0


def strip(video: Path, out: Path, frames=(0, 60, 120, 199), width: int = 320) -> None:
    from vos.data import VideoFile

    v = VideoFile(video)
    h = round(width * v.native_size[0] / v.native_size[1])
    Image.fromarray(np.concatenate([np.asarray(Image.fromarray(v[i]).resize((width, h), Image.BILINEAR))
                                    for i in frames if i < len(v)], 1)).save(out)


def main(out: str = "outputs/demo") -> int:
    from vos.infer import main as infer_main

    out_dir = Path(out)
    boxes = [a for b in BOXES for a in ("--box", b)]
    code = infer_main(["--input", str(CLIP), *boxes, "--out", str(out_dir / "masks"), "--overlay"])
    if code == 0:
        strip(out_dir / "masks" / "bedroom_overlay.mp4", out_dir / "overlay_strip.png")
        print(f"overlay video: {out_dir / 'masks' / 'bedroom_overlay.mp4'}; frames 0, 60, 120, 199: "
              f"{out_dir / 'overlay_strip.png'}")
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
