"""Training clips of `clip_len` frames (3 by default), frame 0 being the annotated reference.

Regimes:
- static: an annotated image + clip_len - 1 augmented copies (crop, affine, perspective, colour jitter, flip); every
  frame has a mask.
- composite: like static, but the annotated objects are pasted onto a frame of another video of the same
  source and move independently of that background.
- merge: a static clip with the objects of another annotated image of the source pasted over it, moving on
  their own: several objects, occlusion, and unlabelled look-alike distractors.
- sparse: a video with ONE annotated frame; the other frames come from a window on one side of it
  (the weakly-supervised regime: only frame 0 has a mask).
- dense: like sparse, but every frame's mask is known (the fully supervised reference).

Augmentation per regime: the table in vos.data.augment. Data sources: the registry in vos.data.sources.
Every sample is a pure function of its key (source, index, seed[, clip length]), so a run resumes exactly;
`MixtureSampler` derives the keys from (run seed, step, rank).

A sample of T = clip_len frames: images (T, 3, H, W) float in [0, 1]; masks (T, K, H, W) float one-hot of up to K
objects; valid (K,) bool; has_mask (T,) bool; void (T, H, W) bool.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import torch

from vos.data.augment import Augment, augment_for, colour_jitter, crop_box, paste, random_homography, warp
from vos.data.sources import Annotated, units_from_source
from vos.utils import VosError

MIN_AREA = 64  # objects smaller than this (pixels, in the crop) on frame 0 are not used
REGIMES = ("static", "composite", "merge", "sparse", "dense")
PARTNER_ID = 1000  # partner ids are shifted by this in merged clips
DISTRACTOR_P = 0.5  # merged clips: chance that another image's pasted objects are unlabelled distractors
COPY_P = 0.25  # merged clips: chance that the partner is the image itself (a look-alike distractor)
SMALL_SHARE = (0.01, 0.03)  # merged clips, Augment.small: the pasted objects' share of the frame after scaling down
HIDE_MAX_BOX = 0.2  # merged clips: objects hidden behind an occluder (Augment.hide) have a box of at most this share
BAND_WIDTH = (0.04, 0.12)  # occluding bands (Augment.band): width, as a share of the frame's width
BEHIND_MAX_WIDTH = 0.5  # Augment.behind: objects wider than this share of the frame do not pass behind a strip
TOUCH_COVER = (0.05, 0.2)  # Augment.touch: the pasted objects cover at most this share (drawn) of the object they touch


VOID = 255  # id of pixels whose label is unknown (DAVIS-2017's void): ignored by the loss

def _frames_of(unit: Annotated, regime: str, size: tuple[int, int], max_gap: int, rng: np.random.Generator,
               aug: Augment, clip_len: int = 3) -> tuple[list[np.ndarray], list[np.ndarray | None], list[int]]:
    """The clip_len warped frames of a clip from the unit's annotated frame, their id masks (None where not
    allowed) and the ids of the objects big enough on frame 0."""
    a = unit.annotated
    for _attempt in range(10):
        if regime in ("static", "composite", "merge"):
            frames_idx = [a] * clip_len
        else:
            side = int(rng.choice([-1, 1]))
            lo, hi = (a + 1, min(unit.n_frames - 1, a + max_gap)) if side > 0 else (max(0, a - max_gap), a - 1)
            if hi < lo:  # nothing on that side: use the other
                lo, hi = (max(0, a - max_gap), a - 1) if side > 0 else (a + 1, min(unit.n_frames - 1, a + max_gap))
            if hi < lo + clip_len - 2:
                raise VosError(f"a sparse/dense clip needs at least {clip_len} frames within max_gap of the annotated "
                               f"frame (data.clip_len={clip_len}, max_gap={max_gap}; raise max_gap)")
            others = sorted(rng.choice(np.arange(lo, hi + 1), clip_len - 1, replace=False), reverse=bool(side < 0))
            frames_idx = [a, *map(int, others)]
        img0, mask0 = unit.load_frame(a), unit.load_mask(a)
        box = crop_box((mask0 > 0) & (mask0 != VOID), size, rng, aug.zoom)
        flip = bool(rng.random() < 0.5)
        imgs, masks, path = [], [], None
        if aug.smooth and regime in ("static", "composite", "merge"):
            ends = [random_homography(rng, *size, strength=aug.warp0), random_homography(rng, *size, strength=aug.warp)]
            path = [_interpolate(*ends, k / (clip_len - 1)) for k in range(clip_len)]
        for k, t in enumerate(frames_idx):
            img = img0 if t == a else unit.load_frame(t)
            mask = mask0 if t == a else (unit.load_mask(t) if unit.dense else None)
            Hm = path[k] if path else random_homography(rng, *size, strength=aug.warp if k > 0 else aug.warp0)
            i, m = warp(img, mask, box, size, Hm, flip)
            imgs.append(colour_jitter(i, rng) if aug.colour and k > 0 else i)
            masks.append(m)
        objs = _big_objects(masks[0])
        if objs:
            return imgs, masks, objs
    return imgs, masks, []


def _interpolate(H0: np.ndarray, H1: np.ndarray, a: float) -> np.ndarray:
    """The homography a of the way from H0 to H1 (entry-wise; fine for the mild perspectives of augmentation)."""
    H = (1 - a) * H0 + a * H1
    return H / H[2, 2]


def _big_objects(mask: np.ndarray) -> list[int]:
    ids, counts = np.unique(mask, return_counts=True)
    return [int(i) for i, c in zip(ids, counts) if i not in (0, VOID) and c >= MIN_AREA]


def _merge(imgs, masks, objs, partner: tuple, rng: np.random.Generator, max_objects: int, copy: bool,
           crossing: float = 0.0, leave: float = 0.0, hide: float = 0.0, touch: float = 0.0, small: float = 0.0,
           hide_alike: float = 0.0):
    """Paste 1-2 objects of a partner clip over a clip (Cutie/STCN's "merge two clips"): they move on their own,
    occlude the clip's objects, and are either more objects to track or, with probability DISTRACTOR_P (always
    when `copy`: the partner is the same image, so the pasted object is a look-alike), unlabelled distractors
    the model must leave as background. Partner ids are shifted by PARTNER_ID so they never collide. With probability
    `crossing` (Augment.crossing) the pasted objects cross one of the clip's objects (see `_cross`); otherwise, with
    probability `leave` (Augment.leave), they leave the frame and come back (see `_leave_and_return`); otherwise,
    with probability `touch` (Augment.touch), they stand against one of the clip's objects (see `_touch`). With
    probability `hide` (Augment.hide), one of the clip's objects whose box takes at most HIDE_MAX_BOX of the frame
    is hidden for the middle frames (see `_hide`), with probability `hide_alike` (Augment.hide_alike) behind a
    look-alike: another object of the image, or the object itself, enlarged in front of it. With probability `small`
    (Augment.small) the pasted objects are scaled down to SMALL_SHARE of the frame together, and are objects to track
    (unless `copy`): a small object in a scene of bigger ones, which its own descriptor must still pick out."""
    p_imgs, p_masks, p_objs = partner
    if not p_objs:
        return imgs, masks, objs
    hideable = [o for o in objs if _box_share(masks[0] == o) <= HIDE_MAX_BOX] if hide and len(masks) >= 4 else []
    if hideable and rng.random() < hide:  # a bigger object's occluder would be a cut to another scene
        obj = hideable[int(rng.integers(len(hideable)))]
        share = _box_share(masks[0] == obj)
        alike = None
        if hide_alike and rng.random() < hide_alike:  # no draw without it: the other rows' clips stay as they were
            # another object of the image (COCO: often the same kind of thing) no smaller than a quarter of it
            others = [o for o in _big_objects(masks[0]) if o != obj and _box_share(masks[0] == o) >= share / 4]
            alike = others[int(rng.integers(len(others)))] if others else obj
        imgs, masks = _hide(imgs, masks, obj, p_imgs, alike)
    tiny = small > 0 and rng.random() < small  # no draw without it: the other rows' clips stay as they were
    if tiny:
        p_objs = [int(o) for o in rng.permutation(p_objs)[: int(rng.integers(1, 3))]]
        area = int(np.isin(p_masks[0], p_objs).sum())
        f = min(1.0, float(np.sqrt(rng.uniform(*SMALL_SHARE) * p_masks[0].size / max(area, 1))))
        p_imgs, p_masks = _shrink(p_imgs, p_masks, rng, scale=(f, f))
    else:
        p_imgs, p_masks = _shrink(p_imgs, p_masks, rng)
        p_objs = [int(o) for o in rng.permutation(p_objs)[: int(rng.integers(1, 3))]]
    keep = [np.isin(m, p_objs) for m in p_masks]
    if crossing and objs and keep[0].any() and rng.random() < crossing:
        mid = len(masks) // 2
        p_imgs, p_masks = _cross(p_imgs, p_masks, keep[0], masks[mid] == objs[int(rng.integers(len(objs)))])
        keep = [np.isin(m, p_objs) for m in p_masks]
    elif leave and len(masks) >= 4 and keep[0].any() and rng.random() < leave:
        p_imgs, p_masks = _leave_and_return(p_imgs, p_masks, keep[0], rng)
        keep = [np.isin(m, p_objs) for m in p_masks]
    elif touch and objs and keep[0].any() and rng.random() < touch:
        p_imgs, p_masks = _touch(p_imgs, p_masks, keep[0], masks[0] == objs[int(rng.integers(len(objs)))], rng)
        keep = [np.isin(m, p_objs) for m in p_masks]
    imgs = [paste(pi, k, i) for pi, k, i in zip(p_imgs, keep, imgs)]
    masks = [np.where(k, pm.astype(np.int32) + PARTNER_ID, m).astype(np.int32) for m, pm, k in zip(masks, p_masks, keep)]
    visible = _big_objects(masks[0])
    objs = [o for o in objs if o in visible]  # still visible after the occlusion
    rng.shuffle(objs)
    if objs and (copy or (not tiny and rng.random() < DISTRACTOR_P)):
        return imgs, masks, objs
    extra = [o + PARTNER_ID for o in p_objs if o + PARTNER_ID in visible]
    return imgs, masks, objs[: max(1, max_objects - len(extra))] + extra


def _cross(p_imgs, p_masks, keep0: np.ndarray, target: np.ndarray):
    """Move the pasted objects (`keep0`: their pixels on frame 0) in a straight line across `target` (a mask on
    the middle frame T // 2): by d on that frame, where d takes their frame-0 centre to the target's, and by
    d * t / (T // 2) on frame t (3 frames: d, then 2d). What moves out of the frame is cut: a pasted object may
    leave."""
    if not target.any():
        return p_imgs, p_masks
    ys, xs = np.nonzero(keep0)
    ty, tx = np.nonzero(target)
    d = np.array([tx.mean() - xs.mean(), ty.mean() - ys.mean()]) / (len(p_masks) // 2)
    return _translate(p_imgs, p_masks, [t * d for t in range(len(p_masks))])


def _touch(p_imgs, p_masks, keep0: np.ndarray, target0: np.ndarray, rng: np.random.Generator):
    """Move the pasted objects (`keep0`: their pixels on frame 0), by one shift for every frame, to stand against a
    clip object (`target0`: its pixels on frame 0) from a random side: brought in along a line through its centre
    until they cover a share of it drawn from TOUCH_COVER, or until half of them is over it (a small object in front
    of a big one). Two objects touching from the given frame on, one over the other's edge, as a rider behind a
    rhino: their ids must not bleed across the boundary."""
    if not target0.any():
        return p_imgs, p_masks
    h, w = keep0.shape
    ys, xs = np.nonzero(keep0)
    ty, tx = np.nonzero(target0)
    angle = rng.uniform(0, 2 * np.pi)
    centre = np.array([tx.mean() - xs.mean(), ty.mean() - ys.mean()])  # the shift that centres them on the object
    cover = rng.uniform(*TOUCH_COVER) * len(ty)
    best = None
    for s in np.linspace(np.hypot(h, w), 0, 128):  # from out of the frame inwards
        d = centre + s * np.array([np.cos(angle), np.sin(angle)])
        y, x = np.round(ys + d[1]).astype(int), np.round(xs + d[0]).astype(int)
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        over = int(target0[y[inside], x[inside]].sum())
        if best is not None and (over > cover or over > len(ys) / 2):
            break
        best = d
    return _translate(p_imgs, p_masks, [best] * len(p_masks))


def _leave_and_return(p_imgs, p_masks, keep0: np.ndarray, rng: np.random.Generator):
    """Move the pasted objects (`keep0`: their pixels on frame 0) out of the frame across the edge nearest to them
    and back: in on frame 0, partly out on the next, wholly out for the middle frames (at least one), partly back,
    and back where they started on the last frame: what a tracker must survive when an object exits and re-enters
    (its id must not move onto another object meanwhile, and it must be found again)."""
    h, w = keep0.shape
    ys, xs = np.nonzero(keep0)
    # distance to push the objects' bounding box wholly out, towards each edge: left, right, up, down
    out = {(-1, 0): xs.max() + 1, (1, 0): w - xs.min(), (0, -1): ys.max() + 1, (0, 1): h - ys.min()}
    nearest = sorted(out, key=out.get)[: 2]  # of the two nearest edges, one at random
    direction = nearest[int(rng.integers(len(nearest)))]
    T = len(p_masks)
    tri = 1 - np.abs(2 * np.arange(T) / (T - 1) - 1)  # 0 at both ends, 1 in the middle
    shift = np.minimum(1.6 * tri, 1.15) * out[direction] * rng.uniform(1.0, 1.2)
    return _translate(p_imgs, p_masks, [np.array(direction) * s for s in shift])


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The mask's bounding box (y0, y1, x0, x1), inclusive; None when it is empty."""
    ys, xs = np.nonzero(mask)
    return (ys.min(), ys.max(), xs.min(), xs.max()) if len(ys) else None


def _box_share(mask: np.ndarray) -> float:
    """The share of the frame taken by the mask's bounding box."""
    b = _bounds(mask)
    return 0.0 if b is None else (b[1] - b[0] + 1) * (b[3] - b[2] + 1) / mask.size


def _hide(imgs, masks, obj: int, cover: list[np.ndarray], alike: int | None = None):
    """Hide object `obj` on the middle frames (all but the first and last) behind an occluder: an ellipse of the
    `cover` frames' pixels around its bounding box, labelled background, whatever was under it. The object is wholly
    out of sight there and back on the last frame: its id must not move onto another object meanwhile (an id handed
    to the nearest person while its owner is hidden: RESULTS.md). With `alike` (an id of the clip's masks, `obj`
    itself allowed) a look-alike stands in front of the ellipse too: that object of the same frame, enlarged until
    its box spans the ellipse (`_enlarged`), labelled background, as bmx-bumps' spectator in black stands in front of
    the rider in black: the hidden object's id must not take the look-alike in front of it."""
    imgs, masks = list(imgs), list(masks)
    for t in range(1, len(masks) - 1):
        b = _bounds(masks[t] == obj)
        if b is None:
            continue
        y0, y1, x0, x1 = b
        region = np.zeros(masks[t].shape, np.uint8)
        centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
        # semi-axes 1.5x the box's half sides (> sqrt 2: the box's corners are inside), plus a margin
        axes = (int(np.ceil(0.75 * (x1 - x0 + 1))) + 3, int(np.ceil(0.75 * (y1 - y0 + 1))) + 3)
        cv2.ellipse(region, centre, axes, 0, 0, 360, 1, -1)
        region = region.astype(bool)
        look_alike = masks[t] == alike if alike is not None else None
        front = _enlarged(imgs[t], look_alike, centre, axes) if look_alike is not None and look_alike.any() else None
        imgs[t] = np.where(region[..., None], cover[t], imgs[t])
        if front is not None:  # the look-alike is taken before the cover: it may be the hidden object itself
            pixels, shape = front
            imgs[t] = np.where(shape[..., None], pixels, imgs[t])
            region |= shape
        masks[t] = np.where(region, 0, masks[t]).astype(masks[t].dtype)
    return imgs, masks


def _enlarged(img: np.ndarray, mask: np.ndarray, centre: tuple[int, int], axes: tuple[int, int]):
    """The image and the object `mask` scaled (one factor) and shifted so that the object's box is centred on `centre`
    (x, y) and spans the ellipse of semi-axes `axes` in both directions (a look-alike closer to the camera)."""
    y0, y1, x0, x1 = _bounds(mask)
    f = max(2 * axes[0] / (x1 - x0 + 1), 2 * axes[1] / (y1 - y0 + 1))
    A = np.array([[f, 0, centre[0] - f * (x0 + x1) / 2], [0, f, centre[1] - f * (y0 + y1) / 2]])
    (front,), (shape,) = _affine([img], [mask], A)
    return front, shape.astype(bool)


def _band(imgs, masks, obj_mask: np.ndarray, rng: np.random.Generator):
    """Stand a thin band in front of an object on every frame (Augment.band): a pole or a trunk of the scene between
    the camera and the object. The band crosses the object's box (`obj_mask`: its frame-0 pixels) on frame 0, leans
    at most 25 degrees off the vertical (a quarter of the time off the horizontal), drifts steadily by up to a fifth
    of the frame over the clip, and shows the frame's own pixels from elsewhere (a fixed shift, darkened or
    brightened): scene, not a new thing. Labelled background wherever a mask is known; frames without one stay so."""
    h, w = obj_mask.shape
    y0, y1, x0, x1 = _bounds(obj_mask)
    centre = np.array([rng.uniform(x0, x1 + 1), rng.uniform(y0, y1 + 1)])
    angle = np.deg2rad(rng.uniform(-25, 25) + (90 if rng.random() < 0.25 else 0))
    along = np.array([np.sin(angle), np.cos(angle)])  # the band's direction (x, y): vertical at angle 0
    half = rng.uniform(*BAND_WIDTH) * w / 2
    drift = np.array([-along[1], along[0]]) * rng.uniform(-0.2, 0.2) * w  # across the band, over the whole clip
    shift = (int(rng.integers(h // 4, h - h // 4 + 1)), int(rng.integers(w // 4, w - w // 4 + 1)))
    gain = rng.uniform(0.5, 1.2)
    across = _across(h, w, along)
    regions = [np.abs(across - _across_of(centre + drift * (t / max(1, len(imgs) - 1) - 0.5), along)) <= half
               for t in range(len(imgs))]
    covers = [np.clip(np.roll(img, shift, (0, 1)).astype(np.float32) * gain, 0, 255).astype(np.uint8) for img in imgs]
    return _cover(imgs, masks, regions, covers)


def _across_of(point: np.ndarray, along: np.ndarray) -> float:
    """The signed distance of a point (x, y) across strips running along `along` (x, y), from the origin's strip."""
    return float(point[0] * along[1] - point[1] * along[0])


def _across(h: int, w: int, along: np.ndarray) -> np.ndarray:
    """`_across_of` for every pixel of an h x w frame."""
    ys, xs = np.mgrid[:h, :w]
    return xs * along[1] - ys * along[0]


def _cover(imgs, masks, regions, covers):
    """Show each frame's cover image on its region, labelled background wherever a mask is known."""
    out_imgs, out_masks = [], []
    for img, mask, region, cover in zip(imgs, masks, regions, covers):
        out_imgs.append(paste(cover, region, img))
        out_masks.append(None if mask is None else np.where(region, 0, mask).astype(mask.dtype))
    return out_imgs, out_masks


def _pass_behind(imgs, masks, obj: int, cover: np.ndarray, rng: np.random.Generator):
    """The object passes behind a wide strip of another scene (`cover`: a wall, a pillar, a passer-by close to the
    camera; Augment.behind): the strip stands beside it on frame 0, wholly hides it on the middle frames (it stays
    put there, as wide as the object's extent across it on those frames plus a margin), and is past it, on the other
    side, on the last frame. Objects wider than BEHIND_MAX_WIDTH of the frame across the strip are left alone (the
    strip would be a cut to another scene). Needs the masks of every frame (where the object is decides where the
    strip is). The cover comes from another image, not this one: pixels of this one could show the object itself
    elsewhere, and a look-alike labelled background where the object merely moved would teach the wrong thing."""
    h, w = masks[0].shape
    angle = np.deg2rad(rng.uniform(-25, 25) + (90 if rng.random() < 0.25 else 0))
    along = np.array([np.sin(angle), np.cos(angle)])
    across = _across(h, w, along)
    spans = [across[m == obj] for m in masks]
    middle = np.concatenate(spans[1:-1])
    if not len(middle) or not len(spans[0]) or not len(spans[-1]) or np.ptp(middle) > BEHIND_MAX_WIDTH * w:
        return imgs, masks
    half = (middle.max() - middle.min()) / 2 + rng.uniform(0.03, 0.2) * w + 2
    side = 1 if rng.random() < 0.5 else -1  # the strip moves to +across (side 1) or to -across
    gap = rng.uniform(0.02, 0.1) * w
    first = spans[0].min() - half - gap if side > 0 else spans[0].max() + half + gap
    last = spans[-1].max() + half + gap if side > 0 else spans[-1].min() - half - gap
    centres = [first] + [(middle.max() + middle.min()) / 2] * (len(masks) - 2) + [last]
    return _cover(imgs, masks, [np.abs(across - c) <= half for c in centres], [cover] * len(imgs))


def _translate(imgs, masks, offsets: list[np.ndarray]):
    """Shift each frame's image and id mask by its (dx, dy) offset; what leaves the frame is cut."""
    moved = [_affine([i], [m], np.array([[1.0, 0, d[0]], [0, 1.0, d[1]]])) for i, m, d in zip(imgs, masks, offsets)]
    return [i[0] for i, _ in moved], [m[0] for _, m in moved]


def _affine(imgs, masks, A: np.ndarray):
    """Warp images (bilinear, reflected border) and id masks (nearest, border 0) by the 2x3 affine A."""
    h, w = masks[0].shape
    return ([cv2.warpAffine(i, A, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for i in imgs],
            [cv2.warpAffine(m.astype(np.uint8), A, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) for m in masks])


def _shrink(imgs, masks, rng: np.random.Generator, scale=(0.35, 0.8)):
    """Scale a partner clip down about a random point (one factor for all frames), so that its pasted objects
    occlude part of the scene rather than all of it."""
    h, w = masks[0].shape
    f = rng.uniform(*scale)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    return _affine(imgs, masks, np.array([[f, 0, cx * (1 - f)], [0, f, cy * (1 - f)]]))


def _scene_of(unit: Annotated, size: tuple[int, int], rng: np.random.Generator, motion: float,
              clip_len: int) -> list[np.ndarray]:
    """clip_len views of a random crop of one of the unit's frames, the later ones warped by homographies of strength
    `motion` (objects included: a backdrop, or a cover for Augment.behind)."""
    full = unit.load_frame(int(rng.integers(unit.n_frames)))
    box = crop_box(np.zeros(full.shape[:2], bool), size, rng)
    flip = bool(rng.random() < 0.5)
    return [warp(full, None, box, size, random_homography(rng, *size, motion * (k > 0)), flip)[0]
            for k in range(clip_len)]


def make_sample(unit: Annotated, regime: str, size: tuple[int, int], max_objects: int, max_gap: int,
                seed: int, background: Annotated | None = None, aug: Augment | None = None,
                clip_len: int = 3) -> dict[str, torch.Tensor]:
    """One training clip of clip_len frames from the unit's annotated frame.

    static: the annotated frame under three random warps and colour jitters. composite: the annotated
    objects cut out and pasted onto a frame of another video (`background`), object and background warped
    independently, so the object moves against its surroundings and the scene has new distractors.
    merge: a static clip with 1-2 objects of another annotated image (`background`, or the image itself) pasted
    over it from their own static clip: occlusion, several objects, look-alike distractors (see `_merge`).
    sparse/dense: the annotated frame and clip_len - 1 real frames within max_gap of it (masks only where allowed).
    Any regime: with Augment.band, a band of scene may stand in front of one of the objects on every frame (`_band`);
    with Augment.behind (clips of 4+ frames, every mask known), one of the objects may pass behind a wide strip of
    scene for the middle frames (`_pass_behind`).
    Objects on frame 0 beyond max_objects stay unlabelled (background): more distractors. Pixels of id VOID
    (255) in a mask are "unknown": they come back as `void` (3, H, W) and the loss ignores them.
    """
    rng = np.random.default_rng(seed)
    aug = aug or augment_for(regime)
    bg = None
    if regime in ("composite", "merge") and background is None:
        raise VosError(f"the {regime} regime needs a second unit (a source with at least 2 samples)")
    if regime == "composite":
        bg = _scene_of(background, size, rng, aug.background_warp, clip_len)
    imgs, masks, objs = _frames_of(unit, regime, size, max_gap, rng, aug, clip_len)
    if bg is not None:
        keep = [np.isin(m, objs) for m in masks]
        imgs = [paste(i, k, b) for i, k, b in zip(imgs, keep, bg)]
        masks = [np.where(k, m, 0).astype(np.uint8) for m, k in zip(masks, keep)]
    if aug.band and objs and rng.random() < aug.band:  # draws only with bands on: other rows keep their samples
        imgs, masks = _band(imgs, masks, masks[0] == objs[int(rng.integers(len(objs)))], rng)
        visible = _big_objects(masks[0])
        objs = [o for o in objs if o in visible]
    if aug.behind and objs and clip_len >= 4 and all(m is not None for m in masks) and rng.random() < aug.behind:
        cover = _scene_of(background if background is not None else unit, size, rng, 0.0, 1)[0]
        imgs, masks = _pass_behind(imgs, masks, objs[int(rng.integers(len(objs)))], cover, rng)
        visible = _big_objects(masks[0])
        objs = [o for o in objs if o in visible]
    if regime == "merge":
        copy = bool(rng.random() < COPY_P)
        partner = _frames_of(unit if copy else background, "merge", size, max_gap, rng, aug, clip_len)
        imgs, masks, objs = _merge(imgs, masks, objs, partner, rng, max_objects, copy, aug.crossing, aug.leave,
                                   aug.hide, aug.touch, aug.small, aug.hide_alike)
    else:
        rng.shuffle(objs)
    objs = objs[:max_objects]
    K = max_objects
    onehot = np.zeros((clip_len, K, *size), np.float32)
    has = np.array([m is not None for m in masks])
    for t, m in enumerate(masks):
        if m is not None:
            for k, o in enumerate(objs):
                onehot[t, k] = m == o
    valid = np.zeros(K, bool)
    valid[: len(objs)] = True
    void = np.stack([m == VOID if m is not None else np.zeros(size, bool) for m in masks])
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    return {"images": images, "masks": torch.from_numpy(onehot), "valid": torch.from_numpy(valid),
            "has_mask": torch.from_numpy(has), "void": torch.from_numpy(void)}


class ClipDataset(torch.utils.data.Dataset):
    """All sources side by side; an item's key is (source, index within the source, seed) and optionally the clip's
    length (else `clip_len`), from MixtureSampler."""

    def __init__(self, sources, size, max_objects: int, data_root: str = "", clip_len: int = 3,
                 zoom: tuple[float, float] = Augment.zoom):
        total = sum(s.weight for s in sources)
        if abs(total - 1) > 1e-6:
            raise VosError(f"data.sources weights must sum to 1, they sum to {total:g}: "
                           + ", ".join(f"{s.kind}={s.weight:g}" for s in sources))
        for s in sources:
            if s.regime not in REGIMES:
                raise VosError(f"data source {s.kind}: unknown regime '{s.regime}'; choose one of {', '.join(REGIMES)}")
        self.sources = list(sources)
        if len(zoom) != 2 or not 1 <= zoom[0] <= zoom[1]:
            raise VosError(f"data.zoom must be [low, high] with 1 <= low <= high (1 = the whole frame), got {list(zoom)}")
        self.augs = [replace(augment_for(s.regime, s.augment), zoom=tuple(zoom)) for s in self.sources]
        self.units = [units_from_source(s, data_root) for s in self.sources]
        for s, u in zip(self.sources, self.units):
            if not u:
                raise VosError(f"data source {s.kind} at '{s.root}' (split {s.split}) has no annotated samples")
        self.size, self.max_objects, self.clip_len = tuple(size), max_objects, clip_len

    def __len__(self) -> int:
        return sum(len(u) for u in self.units)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        src, idx, seed = key[:3]
        clip_len = key[3] if len(key) > 3 else self.clip_len
        s, units = self.sources[src], self.units[src]
        background = None
        if (s.regime in ("composite", "merge") or self.augs[src].behind) and len(units) > 1:
            background = units[(idx + 1 + seed % (len(units) - 1)) % len(units)]  # any other sample
        return make_sample(units[idx], s.regime, self.size, self.max_objects, s.max_gap, seed, background,
                           self.augs[src], clip_len)


class MixtureSampler(torch.utils.data.Sampler):
    """Batches of (source, index, seed, clip length) drawn by source weight, a pure function of (seed, step, rank):
    resuming at step N reproduces the batches of an uninterrupted run. A `long_share` of the steps (drawn per step,
    the same on every rank) has clips of `long_len` frames, the rest the dataset's `clip_len`."""

    def __init__(self, dataset: ClipDataset, batch_size: int, seed: int, rank: int, start_step: int, steps: int,
                 long_share: float = 0.0, long_len: int = 6):
        self.ds, self.bs, self.seed, self.rank = dataset, batch_size, seed, rank
        self.start, self.steps = start_step, steps
        self.weights = np.array([s.weight for s in dataset.sources])
        self.long_share, self.long_len = long_share, long_len

    def clip_len(self, step: int) -> int:
        """The clip length of a step's batch; its own stream, so the keys of runs without long clips stay as they were."""
        if self.long_share and np.random.default_rng([self.seed, step, 1 << 20]).random() < self.long_share:
            return self.long_len
        return self.ds.clip_len

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        for step in range(self.start, self.steps):
            rng = np.random.default_rng([self.seed, step, self.rank])
            batch, clip_len = [], self.clip_len(step)
            for _ in range(self.bs):
                src = int(rng.choice(len(self.weights), p=self.weights))
                batch.append((src, int(rng.integers(len(self.ds.units[src]))), int(rng.integers(2 ** 31)), clip_len))
            yield batch
