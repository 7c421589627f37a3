"""Multi-object validation composites built from single-object videos (DAVIS-2017 layout).

Each sequence is one video of a split (its own frames and object, id 1) with the annotated objects of one or
two other videos of the split pasted in frame by frame at the same frame index (ids 2, 3), each flipped
left-right where that overlaps the objects below it less. Later objects occlude earlier ones, and the masks
are exact by construction: a pixel belongs to the last object pasted over it. A sequence is as long as the
shortest of its videos. Deterministic (a fixed seed); no network.

    python -m vos.data.composites                       # -> data/val10-composites (the default below)
    python -m vos.data.composites --split configs/splits/davis2016_val10.txt --out DIR --sequences 12
    python -m vos.data.composites --twins               # -> data/val10-twins

Twins (`--twins`): each video's first 40 frames with its own object, frame by frame, pasted again beside it and
left as background in the masks: an exact look-alike that only where the object was tells apart (a model that
goes by appearance alone takes both and scores J ~0.5).

The validation composites are for validation only: never train on them (their videos are the validation
videos). Training composites are built the same way from the training videos with `labels`: a teacher's masks of
every frame (the model's own predictions from the one annotated frame, e.g. outputs/experiments/pseudo_train20),
so that the objects pasted and the id maps come from no human mask beyond the first frame; the data source kind
`composites` (vos.data.sources) builds them on first use:

    python -m vos.data.composites --split configs/splits/davis2016_train20.txt \
        --labels outputs/experiments/pseudo_train20 --sequences 60 --frames 25 --out DIR
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from vos.data.datasets import Sequence, list_sequences
from vos.data.images import read_image
from vos.data.masks import read_mask, write_mask
from vos.utils import VosError, atomic_path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPLIT = ROOT / "configs" / "splits" / "davis2016_val10.txt"
NAME = "val10-composites"  # the derived dataset experiments ask for by this name (data/<NAME> in the repository)
TWINS = "val10-twins"  # the twins of the same split
TWIN_FRAMES = 40
MIN_VISIBLE = 400  # px of every object that must stay visible on the first frame (it is given there)


@dataclass(frozen=True)
class Plan:
    base: str
    partners: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join((self.base, *self.partners))


def plans(names: list[str], count: int, seed: int) -> list[Plan]:
    """`count` composites: every video is a base in turn; the first half of the plans get one partner, the rest
    two (2 and 3 objects)."""
    rng = np.random.default_rng(seed)
    out: list[Plan] = []
    for i in range(count):
        base = names[i % len(names)]
        others = [n for n in names if n != base]
        k = 1 if i < count // 2 else 2
        for _ in range(100):  # a plan drawn twice is drawn again (same draws as before when none repeats)
            plan = Plan(base, tuple(str(p) for p in rng.choice(others, k, replace=False)))
            if plan not in out:
                break
        out.append(plan)
    return out


def _frames(seq: Sequence, n: int, size: tuple[int, int], labels: Path | None = None
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first n frames (RGB) and object masks (bool) of a single-object DAVIS-2016 sequence at size (H, W); the
    masks from `labels`/<seq>/<frame>.png (any id > 0 is the object) instead of the sequence's own when given."""
    images, masks = [], []
    for t in range(n):
        images.append(read_image(seq.frame_dir / f"{seq.frame_names[t]}.jpg", size))
        ids = (read_mask(labels / seq.name / f"{seq.frame_names[t]}.png", size)[0] if labels else seq.read_mask(t)[0])
        m = Image.fromarray((ids > 0).astype(np.uint8) * 255)
        masks.append(np.asarray(m.resize((size[1], size[0]), Image.NEAREST)) > 0)
    return images, masks


def compose(plan: Plan, seqs: dict[str, Sequence], labels: Path | None = None, max_frames: int | None = None,
            overlap: str = "less") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames RGB, id maps uint8) of one composite (at most max_frames long; masks from `labels` as `_frames`);
    each partner flipped left-right where that overlaps the objects below it `overlap` ("less" or "more")."""
    base = seqs[plan.base]
    n = min(len(seqs[s].frame_names) for s in (plan.base, *plan.partners))
    n = min(n, max_frames or n)
    first = read_image(base.frame_dir / f"{base.frame_names[0]}.jpg")
    size = first.shape[:2]
    frames, base_masks = _frames(base, n, size, labels)
    ids = [m.astype(np.uint8) for m in base_masks]
    for k, partner in enumerate(plan.partners, 2):
        images, masks = _frames(seqs[partner], n, size, labels)
        below = sum(int(((i > 0) & m).sum()) for i, m in zip(ids, masks))
        below_flipped = sum(int(((i > 0) & m[:, ::-1]).sum()) for i, m in zip(ids, masks))
        flip = below_flipped < below if overlap == "less" else below_flipped > below
        for t in range(n):
            img, m = (images[t][:, ::-1], masks[t][:, ::-1]) if flip else (images[t], masks[t])
            frames[t] = np.where(m[..., None], img, frames[t])
            ids[t] = np.where(m, np.uint8(k), ids[t])
    return frames, ids


def twin(seq: Sequence, n: int = TWIN_FRAMES) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames RGB, id maps uint8) of the first n frames of a single-object sequence with a twin of its object: on
    every frame the object's own pixels shifted sideways by its frame-0 width + 5 % of the frame, towards the side
    with more room (cut by the frame's edge where it leaves it). The twin is background (0) in the id maps."""
    n = min(n, len(seq.frame_names))
    first = read_image(seq.frame_dir / f"{seq.frame_names[0]}.jpg")
    h, w = first.shape[:2]
    frames, masks = _frames(seq, n, (h, w))
    xs = np.nonzero(masks[0])[1]
    if not len(xs):
        raise VosError(f"{seq.name}: no object on the first frame to twin")
    dx = int(xs.max() - xs.min() + 1 + 0.05 * w) * (1 if w - 1 - xs.max() > xs.min() else -1)
    ids = []
    for t in range(n):
        shifted = np.zeros_like(masks[t])
        img = frames[t].copy()
        src = slice(max(0, -dx), min(w, w - dx))
        dst = slice(max(0, dx), min(w, w + dx))
        shifted[:, dst] = masks[t][:, src]
        img[:, dst] = np.where(shifted[:, dst, None], frames[t][:, src], img[:, dst])
        frames[t] = img
        ids.append(np.where(shifted, 0, masks[t]).astype(np.uint8))
    return frames, ids


def build(out: str | Path, data_root: str | Path, split: str | Path = DEFAULT_SPLIT, count: int = 12,
          seed: int = 0, twins: bool = False, labels: str | Path | None = None, max_frames: int | None = None,
          overlap: str = "less") -> Path:
    """Write the composites of `split` (DAVIS-2016 sequences under data_root/davis2016) to `out` in the DAVIS-2017
    layout (JPEGImages/480p, Annotations/480p with every frame annotated, ImageSets/2017/val.txt); with `twins`, each
    video with a twin of its object (`twin`; count and seed unused). `labels`: a folder <seq>/<frame>.png of masks
    for every frame to use instead of the dataset's (a teacher's, for training composites); `max_frames`: cut each
    composite to its first frames; `overlap`: flip each pasted object where it overlaps the ones below less (the
    validation composites) or more (`compose`). The folder is written beside `out` and renamed when complete: an interrupted
    build leaves no half dataset."""
    out = Path(out)
    labels = Path(labels) if labels else None
    if labels is not None and not labels.is_dir():
        raise VosError(f"label folder not found: {labels}; run the teacher experiment that writes it "
                       "(e.g. python -m vos.experiment pseudo_train20)")
    seqs = {s.name: s for s in list_sequences(Path(data_root) / "davis2016", "davis2016", str(split))}
    need = 1 if twins else 3
    if len(seqs) < need:
        raise VosError(f"{'twins' if twins else 'composites'} need at least {need} video(s) in {split}; found {len(seqs)}")
    made = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp = Path(tmp)
        for plan in ([Plan(n, ()) for n in sorted(seqs)] if twins else plans(sorted(seqs), count, seed)):
            frames, ids = twin(seqs[plan.base]) if twins else compose(plan, seqs, labels, max_frames, overlap)
            hidden = [k for k in range(1, 2 + len(plan.partners)) if (ids[0] == k).sum() < MIN_VISIBLE]
            if hidden:
                print(f"skipping {plan.name}: object(s) {hidden} hardly visible on the first frame")
                continue
            fd, md = tmp / "JPEGImages" / "480p" / plan.name, tmp / "Annotations" / "480p" / plan.name
            fd.mkdir(parents=True)
            md.mkdir(parents=True)
            for t, (f, m) in enumerate(zip(frames, ids)):
                Image.fromarray(f).save(fd / f"{t:05d}.jpg", quality=90)
                write_mask(md / f"{t:05d}.png", m)
            made.append(plan.name)
        (tmp / "ImageSets" / "2017").mkdir(parents=True)
        (tmp / "ImageSets" / "2017" / "val.txt").write_text("\n".join(made) + "\n")
    return out


def build_once(out: Path, what: str, make: Callable[[], object]) -> Path:
    """`out`, built by `make()` unless complete; runs started together: one builds, the others wait for it."""
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.with_name(f".{out.name}.lock")):
        if not (out / "ImageSets" / "2017" / "val.txt").is_file():
            print(f"building {what} once: {out}")
            make()
    return out


def ensure(data_root: str | Path, name: str = NAME) -> Path:
    """data/val10-composites (or data/val10-twins, `name`) in the repository, built on first use."""
    out = ROOT / "data" / name
    return build_once(out, f"the validation {name}", lambda: build(out, data_root, twins=name == TWINS))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=os.environ.get("VOS_DATA", "../shared/data"),
                    help="holds davis2016/ (default: $VOS_DATA, else ../shared/data, as the configs)")
    ap.add_argument("--split", default=str(DEFAULT_SPLIT), help="DAVIS-2016 sequences (a split name or .txt list)")
    ap.add_argument("--out", help=f"default: data/{NAME} (data/{TWINS} with --twins)")
    ap.add_argument("--sequences", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--twins", action="store_true", help="each video with a twin of its object instead")
    ap.add_argument("--labels", help="masks of every frame to use instead of the split's (training composites)")
    ap.add_argument("--frames", type=int, help="cut each composite to its first FRAMES frames")
    ap.add_argument("--overlap", choices=("less", "more"), default="less",
                    help="flip each pasted object where it covers the ones below less (validation) or more")
    a = ap.parse_args(argv)
    out = a.out or str(ROOT / "data" / (TWINS if a.twins else NAME))
    if Path(out).exists():
        raise SystemExit(f"{out} exists; remove it first to build it again")
    print(build(out, a.data_root, a.split, a.sequences, a.seed, a.twins, a.labels, a.frames, a.overlap))


if __name__ == "__main__":
    main()
