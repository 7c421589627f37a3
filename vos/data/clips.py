"""Training clips of 3 frames, frame 0 being the annotated reference.

Regimes:
- static: an annotated image + 2 augmented copies (crop, affine, perspective, colour jitter, flip); every
  frame has a mask.
- composite: like static, but the annotated objects are pasted onto a frame of another video of the same
  source and move independently of that background.
- sparse: a video with ONE annotated frame; the other two frames come from a window on one side of it
  (the weakly-supervised regime: only frame 0 has a mask).
- dense: like sparse, but every frame's mask is known (the fully supervised reference).

Augmentation per regime: the table in vos.data.augment. Data sources: the registry in vos.data.sources.
Every sample is a pure function of its key (source, index, seed), so a run resumes exactly; `MixtureSampler`
derives the keys from (run seed, step, rank).

A sample: images (3, 3, H, W) float in [0, 1]; masks (3, K, H, W) float one-hot of up to K objects;
valid (K,) bool; has_mask (3,) bool.
"""

from __future__ import annotations

import numpy as np
import torch

from vos.data.augment import Augment, augment_for, colour_jitter, crop_box, paste, random_homography, warp
from vos.data.sources import Annotated, units_from_source
from vos.utils import VosError

MIN_AREA = 64  # objects smaller than this (pixels, in the crop) on frame 0 are not used
REGIMES = ("static", "composite", "sparse", "dense")


def make_sample(unit: Annotated, regime: str, size: tuple[int, int], max_objects: int, max_gap: int,
                seed: int, background: Annotated | None = None, aug: Augment | None = None) -> dict[str, torch.Tensor]:
    """One 3-frame training clip from the unit's annotated frame.

    static: the annotated frame under three random warps and colour jitters. composite: the annotated
    objects cut out and pasted onto a frame of another video (`background`), object and background warped
    independently, so the object moves against its surroundings and the scene has new distractors.
    sparse/dense: the annotated frame and two real frames within max_gap of it (masks only where allowed).
    """
    rng = np.random.default_rng(seed)
    aug = aug or augment_for(regime)
    a = unit.annotated
    bg = None
    if regime == "composite":
        if background is None:
            raise VosError("the composite regime needs a background unit (a source with at least 2 videos)")
        bg_full = background.load_frame(int(rng.integers(background.n_frames)))
        bg_box = crop_box(np.zeros(bg_full.shape[:2], bool), size, rng)
        bg_flip = bool(rng.random() < 0.5)
        bg = [warp(bg_full, None, bg_box, size, random_homography(rng, *size, aug.background_warp * (k > 0)),
                   bg_flip)[0] for k in range(3)]
    for _attempt in range(10):
        if regime in ("static", "composite"):
            frames_idx = [a, a, a]
        else:
            side = int(rng.choice([-1, 1]))
            lo, hi = (a + 1, min(unit.n_frames - 1, a + max_gap)) if side > 0 else (max(0, a - max_gap), a - 1)
            if hi < lo:  # nothing on that side: use the other
                lo, hi = (max(0, a - max_gap), a - 1) if side > 0 else (a + 1, min(unit.n_frames - 1, a + max_gap))
            if hi < lo + 1:
                raise VosError("a sparse/dense clip needs at least 3 frames within max_gap of the annotated frame")
            f1, f2 = sorted(rng.choice(np.arange(lo, hi + 1), 2, replace=False), reverse=bool(side < 0))
            frames_idx = [a, int(f1), int(f2)]
        img0, mask0 = unit.load_frame(a), unit.load_mask(a)
        box = crop_box(mask0 > 0, size, rng)
        flip = bool(rng.random() < 0.5)
        imgs, masks = [], []
        for k, t in enumerate(frames_idx):
            img = img0 if t == a else unit.load_frame(t)
            mask = mask0 if t == a else (unit.load_mask(t) if unit.dense else None)
            Hm = random_homography(rng, *size, strength=aug.warp if k > 0 else aug.warp0)
            i, m = warp(img, mask, box, size, Hm, flip)
            imgs.append(colour_jitter(i, rng) if aug.colour and k > 0 else i)
            masks.append(m)
        ids, counts = np.unique(masks[0], return_counts=True)
        objs = [int(i) for i, c in zip(ids, counts) if i not in (0, 255) and c >= MIN_AREA]
        if objs:
            break
    else:
        objs = []
    if bg is not None:
        keep = [np.isin(m, objs) for m in masks]
        imgs = [paste(i, k, b) for i, k, b in zip(imgs, keep, bg)]
        masks = [np.where(k, m, 0).astype(np.uint8) for m, k in zip(masks, keep)]
    rng.shuffle(objs)
    objs = objs[:max_objects]
    K = max_objects
    onehot = np.zeros((3, K, *size), np.float32)
    has = np.array([m is not None for m in masks])
    for t, m in enumerate(masks):
        if m is not None:
            for k, o in enumerate(objs):
                onehot[t, k] = m == o
    valid = np.zeros(K, bool)
    valid[: len(objs)] = True
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    return {"images": images, "masks": torch.from_numpy(onehot), "valid": torch.from_numpy(valid),
            "has_mask": torch.from_numpy(has)}


class ClipDataset(torch.utils.data.Dataset):
    """All sources side by side; an item's key is (source, index within the source, seed), from MixtureSampler."""

    def __init__(self, sources, size, max_objects: int, data_root: str = ""):
        total = sum(s.weight for s in sources)
        if abs(total - 1) > 1e-6:
            raise VosError(f"data.sources weights must sum to 1, they sum to {total:g}: "
                           + ", ".join(f"{s.kind}={s.weight:g}" for s in sources))
        for s in sources:
            if s.regime not in REGIMES:
                raise VosError(f"data source {s.kind}: unknown regime '{s.regime}'; choose one of {', '.join(REGIMES)}")
        self.sources = list(sources)
        self.augs = [augment_for(s.regime, s.augment) for s in self.sources]
        self.units = [units_from_source(s, data_root) for s in self.sources]
        for s, u in zip(self.sources, self.units):
            if not u:
                raise VosError(f"data source {s.kind} at '{s.root}' (split {s.split}) has no annotated samples")
        self.size, self.max_objects = tuple(size), max_objects

    def __len__(self) -> int:
        return sum(len(u) for u in self.units)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        src, idx, seed = key
        s, units = self.sources[src], self.units[src]
        background = None
        if s.regime == "composite" and len(units) > 1:
            background = units[(idx + 1 + seed % (len(units) - 1)) % len(units)]  # any other video
        return make_sample(units[idx], s.regime, self.size, self.max_objects, s.max_gap, seed, background,
                           self.augs[src])


class MixtureSampler(torch.utils.data.Sampler):
    """Batches of (source, index, seed) drawn by source weight, a pure function of (seed, step, rank):
    resuming at step N reproduces the batches of an uninterrupted run."""

    def __init__(self, dataset: ClipDataset, batch_size: int, seed: int, rank: int, start_step: int, steps: int):
        self.ds, self.bs, self.seed, self.rank = dataset, batch_size, seed, rank
        self.start, self.steps = start_step, steps
        self.weights = np.array([s.weight for s in dataset.sources])

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        for step in range(self.start, self.steps):
            rng = np.random.default_rng([self.seed, step, self.rank])
            batch = []
            for _ in range(self.bs):
                src = int(rng.choice(len(self.weights), p=self.weights))
                batch.append((src, int(rng.integers(len(self.ds.units[src]))), int(rng.integers(2 ** 31))))
            yield batch
