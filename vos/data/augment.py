"""Augmentation of training clips: one explicit row per regime, so regimes can be compared at equal strength.

Each clip frame gets a random homography (rotation, scale, shear, shift, mild perspective) of a given
strength; the other frames may also get colour jitter. Frame 0 is the annotated reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vos.utils import VosError


@dataclass(frozen=True)
class Augment:
    warp0: float  # homography strength on frame 0
    warp: float  # homography strength on the other frames
    colour: bool  # colour jitter on the other frames
    background_warp: float = 0.3  # composite: strength of the pasted-onto background's motion on the other frames
    # merge: chance that the pasted objects cross one of the clip's objects: over it on the middle frame, as far
    # past it on the last (crossing paths, the occluded object coming back, pasted objects leaving the frame)
    crossing: float = 0.0
    # merge, clips of 4+ frames: chance (when they do not cross) that the pasted objects leave the frame for the
    # middle frames and come back
    leave: float = 0.0
    # merge, clips of 4+ frames: chance that one of the clip's objects is hidden for the middle frames behind an
    # occluder (a patch of the partner's image over it) and is back on the last: its id must stay off the others
    hide: float = 0.0
    # merge, with hide: chance that the occluder looks like the hidden object (another object of the image, often of
    # the same kind in COCO, or the object itself, enlarged in front of it; see vos.data.clips._hide): a passer-by in
    # black in front of a rider in black, labelled background, which the rider's id must not take
    hide_alike: float = 0.0
    # merge: chance (when they neither cross nor leave) that the pasted objects stand against one of the clip's
    # objects from frame 0 on, over its edge (see vos.data.clips._touch): two touching objects whose ids must not bleed
    # across their boundary
    touch: float = 0.0
    # merge: chance that the pasted objects are scaled down to 1-3 % of the frame (vos.data.clips.SMALL_SHARE) and
    # tracked: a small object in a scene of bigger ones (the validation composites' worst objects are such)
    small: float = 0.0
    # any regime: chance that a thin band of scene (a pole, a trunk: the frame's own pixels from elsewhere) stands in
    # front of one of the clip's objects on every frame, drifting steadily, labelled background: the object passes
    # behind it and shows on both sides (see vos.data.clips._band)
    band: float = 0.0
    # any regime, clips of 4+ frames with every mask known: chance that one of the clip's objects passes behind a
    # wide strip of scene, wholly hidden on the middle frames, beside it on the first and last (see
    # vos.data.clips._pass_behind): a large object gone for a while, whose id must stay off the rest and come back
    behind: float = 0.0
    # pseudo-clips (static, composite, merge): the frames' homographies lie on one straight path from frame 0's to
    # the last frame's (linear interpolation), so things move smoothly over long clips instead of jumping per frame
    smooth: bool = False
    # the crop window: a frame is shown at 1/zoom of its height and width (zoom 1: the whole frame at the inference
    # scale when the clip has the frame's shape), zoom drawn uniformly from this range (DataConfig.zoom sets it)
    zoom: tuple[float, float] = (1.0, 1.6)


# Static pseudo-clips need strong warps and colour changes to imitate motion; real video frames (sparse, dense)
# already move, so they get only a mild warp. Dense = sparse: the fully supervised reference differs from the
# weakly-supervised regime in supervision only.
AUGMENT = {
    "static": Augment(warp0=0.3, warp=1.0, colour=True),
    "composite": Augment(warp0=0.3, warp=1.0, colour=True),
    "merge": Augment(warp0=0.3, warp=1.0, colour=True),
    "merge_crossing": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.5),
    "merge_leave": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5),
    "merge_hide": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5, hide=0.3),
    "static_smooth": Augment(warp0=0.3, warp=1.0, colour=True, smooth=True),
    "merge_leave_smooth": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5, smooth=True),
    "sparse": Augment(warp0=0.3, warp=0.3, colour=False),
    "sparse_band": Augment(warp0=0.3, warp=0.3, colour=False, band=0.5),
    "dense_band": Augment(warp0=0.3, warp=0.3, colour=False, band=0.5),
    "dense_band_behind": Augment(warp0=0.3, warp=0.3, colour=False, band=0.5, behind=0.6),
    "merge_hide_touch": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5, hide=0.3, touch=0.8),
    "merge_hide_small": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5, hide=0.3, small=0.5),
    "merge_hide_behind": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5, hide=0.3, behind=0.6),
    "merge_hide_alike": Augment(warp0=0.3, warp=1.0, colour=True, crossing=0.25, leave=0.5, hide=0.5, hide_alike=0.6),
    "dense": Augment(warp0=0.3, warp=0.3, colour=False),
}


def augment_for(regime: str, override: str = "") -> Augment:
    """The table row for a regime, or the row `override` names (DataSource.augment)."""
    name = override or regime
    if name not in AUGMENT:
        raise VosError(f"unknown augmentation '{name}'; choose one of {', '.join(AUGMENT)}")
    return AUGMENT[name]


def random_homography(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
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


def colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)  # contrast, brightness
    grey = x.mean(2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    x = x * rng.uniform(0.9, 1.1, 3)  # per-channel (hue-ish)
    return np.clip(x, 0, 255).astype(np.uint8)


def crop_box(mask: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator, scale_range=Augment.zoom):
    """A crop window (y0, x0, ch, cw) of the output aspect ratio that keeps the objects (their centre lies
    inside; big objects may be cut)."""
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


def warp(img, mask, box, out_hw, Hm=None, flip=False):
    """Crop `box`, scale to out_hw, apply the homography Hm and an optional horizontal flip (image bilinear,
    mask nearest; mask may be None)."""
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


def paste(fg: np.ndarray, keep: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Paste the pixels of fg where `keep` onto bg, with a 1-px feathered edge."""
    alpha = cv2.GaussianBlur(keep.astype(np.float32), (3, 3), 0)[..., None]
    return (alpha * fg + (1 - alpha) * bg).astype(np.uint8)
