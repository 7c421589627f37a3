"""Training clips of 3 frames, frame 0 being the annotated reference.

Regimes:
- static: an annotated image + 2 augmented copies (crop, affine, perspective, colour jitter, flip); every
  frame has a mask.
- composite: like static, but the annotated objects are pasted onto a frame of another video of the same
  source and move independently of that background.
- sparse: a video with ONE annotated frame; the other two frames come from a window on one side of it
  (the weakly-supervised regime: only frame 0 has a mask).
- dense: like sparse, but every frame's mask is known (the fully supervised reference).

Every sample is a pure function of (index, seed), so a run resumes exactly; `MixtureSampler` derives the
seeds from (run seed, step, rank).

A sample: images (3, 3, H, W) float in [0, 1]; masks (3, K, H, W) float one-hot of up to K objects;
valid (K,) bool; has_mask (3,) bool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from vos.data.datasets import list_sequences
from vos.data.masks import read_mask
from vos.data.synthetic import make_clip
from vos.utils import VosError, natural_key

MIN_AREA = 64  # objects smaller than this (pixels, in the crop) on frame 0 are not used


REGIMES = ("static", "composite", "sparse", "dense")


@dataclass
class Annotated:
    """One training unit: a way to load frames, the annotated frame, and which frames have masks."""

    n_frames: int
    load_frame: Callable[[int], np.ndarray]  # -> HxWx3 uint8 RGB
    load_mask: Callable[[int], np.ndarray]  # -> HxW uint8 ids (only for frames with masks)
    annotated: int
    dense: bool


def _rand_homography(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """Affine (rotation, scale, shear, shift) plus a mild perspective, about the centre."""
    a = np.deg2rad(rng.uniform(-20, 20) * strength)
    s = np.exp(rng.uniform(-0.25, 0.25) * strength)
    sh = rng.uniform(-0.15, 0.15) * strength
    A = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1, sh], [0, 1]]) * s
    c = np.array([w / 2, h / 2])
    t = c - A @ c + rng.uniform(-0.1, 0.1, 2) * np.array([w, h]) * strength
    H = np.eye(3)
    H[:2, :2], H[:2, 2] = A, t
    H[2, :2] = rng.uniform(-0.0006, 0.0006, 2) * strength * 200 / max(h, w)
    return H


def _colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)  # contrast, brightness
    grey = x.mean(2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    x = x * rng.uniform(0.9, 1.1, 3)  # per-channel (hue-ish)
    return np.clip(x, 0, 255).astype(np.uint8)


def _crop_box(mask: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator, scale_range=(1.0, 1.6)):
    """A crop window (y0, x0, ch, cw) of the output aspect ratio that keeps the objects (their bounding box
    centre lies inside; big objects may be cut)."""
    H, W = mask.shape
    oh, ow = out_hw
    base = min(H / oh, W / ow)
    f = base / rng.uniform(*scale_range)
    ch, cw = max(8, int(oh * f)), max(8, int(ow * f))
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (H / 2, W / 2)
    y0 = int(np.clip(cy - ch / 2 + rng.uniform(-0.25, 0.25) * ch, 0, max(0, H - ch)))
    x0 = int(np.clip(cx - cw / 2 + rng.uniform(-0.25, 0.25) * cw, 0, max(0, W - cw)))
    return y0, x0, min(ch, H), min(cw, W)


def _apply(img, mask, box, out_hw, Hm=None, flip=False):
    y0, x0, ch, cw = box
    oh, ow = out_hw
    S = np.array([[ow / cw, 0, -x0 * ow / cw], [0, oh / ch, -y0 * oh / ch], [0, 0, 1]])
    M = S if Hm is None else Hm @ S
    if flip:
        M = np.array([[-1, 0, ow - 1], [0, 1, 0], [0, 0, 1]]) @ M
    out_img = cv2.warpPerspective(img, M, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out_mask = None if mask is None else cv2.warpPerspective(mask, M, (ow, oh), flags=cv2.INTER_NEAREST,
                                                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out_img, out_mask


def _composite(fg: np.ndarray, keep: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Paste the pixels of fg where `keep` onto bg, with a 1-px feathered edge."""
    alpha = cv2.GaussianBlur(keep.astype(np.float32), (3, 3), 0)[..., None]
    return (alpha * fg + (1 - alpha) * bg).astype(np.uint8)


def make_sample(unit: Annotated, regime: str, size: tuple[int, int], max_objects: int, max_gap: int,
                seed: int, background: Annotated | None = None) -> dict[str, torch.Tensor]:
    """One 3-frame training clip from the unit's annotated frame.

    static: the annotated frame under three random warps and colour jitters. composite: the annotated
    objects cut out and pasted onto a frame of another video (`background`), object and background warped
    independently, so the object moves against its surroundings and the scene has new distractors.
    sparse/dense: the annotated frame and two real frames within max_gap of it (masks only where allowed).
    """
    rng = np.random.default_rng(seed)
    a = unit.annotated
    bg = None
    if regime == "composite":
        if background is None:
            raise VosError("the composite regime needs a background unit (a source with at least 2 videos)")
        bg_full = background.load_frame(int(rng.integers(background.n_frames)))
        bg_box = _crop_box(np.zeros(bg_full.shape[:2], bool), size, rng)
        bg_flip = bool(rng.random() < 0.5)
        bg = [_apply(bg_full, None, bg_box, size, _rand_homography(rng, *size, 0.3 * (k > 0)), bg_flip)[0]
              for k in range(3)]
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
        box = _crop_box(mask0 > 0, size, rng)
        flip = bool(rng.random() < 0.5)
        imgs, masks = [], []
        for k, t in enumerate(frames_idx):
            img = img0 if t == a else unit.load_frame(t)
            mask = mask0 if t == a else (unit.load_mask(t) if unit.dense else None)
            Hm = _rand_homography(rng, *size, strength=1.0 if (regime != "sparse" and k > 0) else 0.3)
            i, m = _apply(img, mask, box, size, Hm, flip)
            imgs.append(_colour_jitter(i, rng) if regime != "sparse" and k > 0 else i)
            masks.append(m)
        ids, counts = np.unique(masks[0], return_counts=True)
        objs = [int(i) for i, c in zip(ids, counts) if i not in (0, 255) and c >= MIN_AREA]
        if objs:
            break
    else:
        objs = []
    if bg is not None:
        keep = [np.isin(m, objs) for m in masks]
        imgs = [_composite(i, k, b) for i, k, b in zip(imgs, keep, bg)]
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


# ------------------------------------------------------------------------------------------------ sources
def _pick_annotated(name: str, frame_names: list[str], annotated_frames: list[int], how: str, rng_seed: int) -> int:
    if how.endswith(".json"):
        listed = json.loads(Path(how).read_text())
        if name not in listed:
            raise VosError(f"{how} lists no annotated frame for video '{name}'")
        frame = frame_names.index(str(listed[name])) if str(listed[name]) in frame_names else -1
        if frame not in annotated_frames:
            raise VosError(f"{how}: frame {listed[name]} of '{name}' has no annotation")
        return frame
    if how == "first":
        return annotated_frames[0]
    if how == "middle":
        return annotated_frames[len(annotated_frames) // 2]
    if how == "random":
        return annotated_frames[np.random.default_rng(rng_seed).integers(len(annotated_frames))]
    raise VosError(f"annotated must be first, middle, random or a .json file, not '{how}'")


def _imread(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise VosError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def units_from_source(src) -> list[Annotated]:
    """Training units of one configured DataSource (see vos.config.DataSource)."""
    kind = src.kind
    if kind == "synthetic":
        def unit(i):
            cache = {}

            def clip():
                if not cache:
                    cache["c"] = make_clip(10_000 + i, n_frames=16, size=(240, 320), n_objects=3, late_objects=0)
                return cache["c"]
            return Annotated(16, lambda t: clip()[0][t], lambda t: clip()[1][t], 0, src.regime == "dense")
        return [unit(i) for i in range(src.length)]
    if kind in ("davis2016", "davis2017", "youtubevos"):
        units = []
        for s in list_sequences(src.root, kind, src.split):
            frames = s.frames()
            ann = sorted(s.annotations)
            if not ann:
                continue
            a = _pick_annotated(s.name, s.frame_names, ann, src.annotated, sum(map(ord, s.name)))
            dense = src.regime == "dense"
            if dense and len(ann) < len(frames):
                raise VosError(f"{s.name}: dense training needs every frame annotated ({len(ann)}/{len(frames)})")

            def load_mask(t, s=s, a=a, dense=dense):
                if t != a and not dense:  # the weakly-supervised regime never reads other masks
                    raise VosError("internal: a non-annotated mask was requested in the sparse regime")
                return s.read_mask(t)[0]
            units.append(Annotated(len(frames), frames.__getitem__, load_mask, a, dense))
        return units
    if kind == "static_folder":
        root = Path(src.root)
        imgs = sorted((p for p in (root / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                      key=lambda p: natural_key(p.name))
        return [Annotated(1, lambda t, p=p: _imread(p), lambda t, p=p: read_mask(root / "masks" / f"{p.stem}.png")[0],
                          0, True) for p in imgs]
    if kind == "coco":
        from pycocotools.coco import COCO

        coco = COCO(src.coco_annotations)
        ids = [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=i, iscrowd=False)]

        def coco_mask(i):
            info = coco.loadImgs(i)[0]
            m = np.zeros((info["height"], info["width"]), np.uint8)
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=i, iscrowd=False)), key=lambda a: -a["area"])
            for k, ann in enumerate(anns[:255], 1):
                m[coco.annToMask(ann) > 0] = k
            return m
        return [Annotated(1, lambda t, i=i: _imread(Path(src.root) / coco.loadImgs(i)[0]["file_name"]),
                          lambda t, i=i: coco_mask(i), 0, True) for i in ids]
    raise VosError(f"unknown data source kind '{kind}'")


class ClipDataset(torch.utils.data.Dataset):
    """All sources concatenated; items are addressed as (global index, seed) by MixtureSampler."""

    def __init__(self, sources, size, max_objects: int):
        total = sum(s.weight for s in sources)
        if abs(total - 1) > 1e-6:
            raise VosError(f"data.sources weights must sum to 1, they sum to {total:g}: "
                           + ", ".join(f"{s.kind}={s.weight:g}" for s in sources))
        for s in sources:
            if s.regime not in REGIMES:
                raise VosError(f"data source {s.kind}: unknown regime '{s.regime}'; choose one of {', '.join(REGIMES)}")
        self.sources = list(sources)
        self.units = [units_from_source(s) for s in self.sources]
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
        return make_sample(units[idx], s.regime, self.size, self.max_objects, s.max_gap, seed, background)


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
