"""Dataset layouts (DAVIS-2016, DAVIS-2017, YouTube-VOS) as lists of `Sequence`s.

A Sequence names its frames and its annotation files; nothing is decoded until asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vos.data.images import list_images
from vos.data.masks import read_mask
from vos.data.video import FrameFolder
from vos.utils import VosError, natural_key

LAYOUTS = ("davis2016", "davis2017", "youtubevos")


@dataclass
class Sequence:
    name: str
    frame_dir: Path
    mask_dir: Path
    layout: str
    # frame index -> annotation PNG. For YouTube-VOS only the sparse (first-appearance) annotations.
    annotations: dict[int, Path] = field(default_factory=dict)
    frame_names: list[str] = field(default_factory=list)
    # YouTube-VOS: frames the evaluation server expects (meta.json); None = every frame
    eval_frames: list[str] | None = None

    @property
    def void_id(self) -> int | None:
        """The id that marks void pixels (DAVIS-2017), or None (in DAVIS-2016 255 is the object)."""
        return 255 if self.layout == "davis2017" else None

    def frames(self, short_side: int | None = None) -> FrameFolder:
        return FrameFolder(self.frame_dir, short_side)

    def read_mask(self, index: int, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        return read_mask(self.annotations[index], size=size, binary_255_is_object=self.layout == "davis2016")


def _split_names(path: Path) -> list[str]:
    if not path.is_file():
        raise VosError(f"split list not found: {path}")
    names: list[str] = []
    for line in path.read_text().split("\n"):
        line = line.strip()
        if not line:
            continue
        # The original DAVIS-2016 lists hold one frame path pair per line; others one sequence per line.
        name = line.split()[0].strip("/").split("/")[-2] if "/" in line else line
        if name not in names:
            names.append(name)
    return names


def _frames_and_masks(frame_dir: Path, mask_dir: Path) -> tuple[list[str], dict[int, Path]]:
    if not frame_dir.is_dir():
        raise VosError(f"frame folder not found: {frame_dir}")
    frames = [p.stem for p in list_images(frame_dir)]
    index = {n: i for i, n in enumerate(frames)}
    masks = {index[p.stem]: p for p in mask_dir.glob("*.png") if p.stem in index} if mask_dir.is_dir() else {}
    return frames, dict(sorted(masks.items()))


def list_sequences(root: str | Path, layout: str, split: str) -> list[Sequence]:
    """Sequences of a split: a split name of the dataset, or (DAVIS layouts) a path to a .txt list of sequences,
    e.g. configs/splits/davis2016_val10.txt. Layouts:
    davis2016: JPEGImages/480p/<seq>, Annotations/480p/<seq> (0/255), ImageSets/480p/<split>.txt
    davis2017: same folders (palette PNGs, 255 = void), ImageSets/2017/<split>.txt
    youtubevos: [<split>/]JPEGImages/<vid>, [<split>/]Annotations/<vid> (sparse), [<split>/]meta.json
    """
    root = Path(root)
    if not root.is_dir():
        raise VosError(f"dataset root not found: {root}")
    if layout in ("davis2016", "davis2017"):
        sets = root / "ImageSets" / ("480p" if layout == "davis2016" else "2017")
        seqs = []
        for name in _split_names(Path(split) if split.endswith(".txt") else sets / f"{split}.txt"):
            fd, md = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
            frames, masks = _frames_and_masks(fd, md)
            seqs.append(Sequence(name, fd, md, layout, masks, frames))
        return seqs
    if layout == "youtubevos":
        base = root / split if (root / split / "JPEGImages").is_dir() else root
        meta_path = base / "meta.json"
        meta = json.loads(meta_path.read_text())["videos"] if meta_path.is_file() else None
        names = sorted(meta) if meta else sorted(p.name for p in (base / "JPEGImages").iterdir() if p.is_dir())
        seqs = []
        for name in names:
            fd, md = base / "JPEGImages" / name, base / "Annotations" / name
            frames, masks = _frames_and_masks(fd, md)
            listed = None
            if meta:
                listed = sorted({f for o in meta[name]["objects"].values() for f in o["frames"]}, key=natural_key)
            seqs.append(Sequence(name, fd, md, layout, masks, frames, listed))
        return seqs
    raise VosError(f"unknown dataset layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
