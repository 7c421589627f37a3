"""A first mask without a mask file: boxes and clicks turned into masks by OpenCV's GrabCut (no extra model).

    ids = mask_from_prompts(frame, boxes=[(x0, y0, x1, y1), ...], points=[(x, y, 1), (x, y, 0), ...])

Each box is one object (ids 1, 2, ... in box order). Points are clicks: label 1 = "this is the object",
0 = "this is not"; with one box they refine it, without a box the positive clicks seed one object.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

from vos.utils import VosError

MIN_BOX_FILL = 0.1  # below this fraction of its box, a GrabCut result is taken as a failure
CLICK_RADIUS = 0.01  # of the image diagonal: the disc a click marks as sure foreground / background


def parse_box(text: str) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise VosError(f"--box '{text}' must be x0,y0,x1,y1 (pixels of the frame)") from None
    if x1 <= x0 or y1 <= y0:
        raise VosError(f"--box '{text}': x1 must be greater than x0 and y1 greater than y0")
    return x0, y0, x1, y1


def parse_point(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        x, y = (int(round(float(v))) for v in parts[:2])
        label = int(parts[2]) if len(parts) > 2 else 1
    except (ValueError, IndexError):
        raise VosError(f"--points '{text}' must be x,y or x,y,label (label 1 = object, 0 = not)") from None
    if len(parts) > 3 or label not in (0, 1):
        raise VosError(f"--points '{text}' must be x,y or x,y,label with label 0 or 1")
    return x, y, label


def _clip_box(box: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """The box within the frame; a box that leaves no background for GrabCut, or misses the frame, is an error."""
    x0, y0, x1, y1 = box
    clipped = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise VosError(f"box {','.join(map(str, box))} lies outside the {w}x{h} frame")
    if clipped == (0, 0, w, h):
        raise VosError(f"box {','.join(map(str, box))} covers the whole {w}x{h} frame: GrabCut needs some background "
                       "outside the box; draw a box around the object only, or give a mask (--mask)")
    if clipped != tuple(box):
        warnings.warn(f"box {','.join(map(str, box))} reaches beyond the {w}x{h} frame; clipped to "
                      f"{','.join(map(str, clipped))}")
    return clipped


def _grabcut(frame: np.ndarray, box: tuple[int, int, int, int] | None, points: list[tuple[int, int, int]],
             iterations: int) -> np.ndarray:
    h, w = frame.shape[:2]
    r = max(2, int(CLICK_RADIUS * np.hypot(h, w)))
    mask = np.full((h, w), cv2.GC_BGD, np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
    else:  # clicks only: everything may be the object, around the positive clicks most likely
        mask[:] = cv2.GC_PR_BGD
        for x, y, label in points:
            if label:
                cv2.circle(mask, (x, y), 6 * r, int(cv2.GC_PR_FGD), -1)
    for x, y, label in points:
        cv2.circle(mask, (x, y), r, int(cv2.GC_FGD if label else cv2.GC_BGD), -1)
    if not (mask == cv2.GC_PR_FGD).any() and not (mask == cv2.GC_FGD).any():
        raise VosError("the box or clicks select no pixel of the frame")
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if box is not None and fg.sum() < MIN_BOX_FILL * (box[2] - box[0]) * (box[3] - box[1]):
        # GrabCut gave (almost) nothing: tiny or low-contrast boxes. The ellipse inscribed in the box is a
        # better start than no object; the user can inspect the saved mask.
        warnings.warn(f"GrabCut found almost nothing in box {box}; using the ellipse inscribed in it")
        fg = np.zeros((h, w), np.uint8)
        x0, y0, x1, y1 = box
        cv2.ellipse(fg, (((x0 + x1) / 2, (y0 + y1) / 2), (float(x1 - x0), float(y1 - y0)), 0.0), 1, -1)
        fg = fg.astype(bool)
    return fg


def mask_from_prompts(frame: np.ndarray, boxes: list[tuple[int, int, int, int]] = (),
                      points: list[tuple[int, int, int]] = (), iterations: int = 5) -> np.ndarray:
    """(H, W) uint8 id map from boxes (one object each) and clicks on an RGB frame. Later boxes win overlaps."""
    boxes, points = list(boxes), list(points)
    if not boxes and not any(label for *_, label in points):
        raise VosError("give at least one --box, or a positive click (--points x,y)")
    if len(boxes) > 1 and points:
        raise VosError("clicks refine a single box; with several boxes, give no --points")
    boxes = [_clip_box(b, *frame.shape[:2]) for b in boxes]
    ids = np.zeros(frame.shape[:2], np.uint8)
    for k, box in enumerate(boxes or [None], 1):
        ids[_grabcut(frame, box, points, iterations)] = k
    if not ids.any():
        raise VosError("GrabCut found no object in the box or around the clicks; draw a tighter box")
    return ids
