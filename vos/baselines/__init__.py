"""Reference baselines with the same per-frame interface as the model's propagator, so that `infer.py
--method copy|flow` runs them through the same CLI and outputs.

step(frame RGB uint8 (H, W, 3), new_mask ids (H, W) or None) -> ids (H, W) uint8.
"""

from __future__ import annotations

import cv2
import numpy as np


def merge_new(current: np.ndarray | None, new: np.ndarray | None) -> np.ndarray | None:
    """Objects given at this frame override the propagated labels where they are; other objects stay."""
    if new is None:
        return current
    if current is None:
        return new.copy()
    out = current.copy()
    out[np.isin(out, np.unique(new[new > 0]))] = 0  # a re-given object is replaced, not duplicated
    out[new > 0] = new[new > 0]
    return out


class CopyBaseline:
    """The first (or latest given) mask copied to every frame."""

    def __init__(self):
        self.mask = None

    def step(self, frame: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        self.mask = merge_new(self.mask, new_mask)
        return self.mask if self.mask is not None else np.zeros(frame.shape[:2], np.uint8)


class FlowBaseline:
    """Warp the previous mask along the backward DIS optical flow (preset MEDIUM), nearest neighbour."""

    def __init__(self):
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.prev_gray = None
        self.mask = None

    def step(self, frame: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.mask is not None and self.prev_gray is not None:
            flow = self.dis.calc(gray, self.prev_gray, None)  # current -> previous
            h, w = gray.shape
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self.mask = cv2.remap(self.mask, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self.mask = merge_new(self.mask, new_mask)
        self.prev_gray = gray
        return self.mask if self.mask is not None else np.zeros(gray.shape, np.uint8)


BASELINES = {"copy": CopyBaseline, "flow": FlowBaseline}


class BaselineStepper:
    """Adapts a numpy baseline (copy, flow) to the Tracker interface (step, remove_object, reset), at the frame's resolution."""

    def __init__(self, make_baseline):
        self.make_baseline = make_baseline
        self.reset()

    def reset(self) -> None:
        """A new pass: a fresh baseline, no objects."""
        self.b = self.make_baseline()
        self.object_ids: list[int] = []
        self.removed: set[int] = set()

    def remove_object(self, obj: int) -> None:
        self.object_ids.remove(obj)
        self.removed.add(obj)

    def step(self, frame: np.ndarray, new_masks: dict[int, np.ndarray] | None = None,
             out_size: tuple[int, int] | None = None):
        import torch

        new = None
        if new_masks:
            new = np.zeros(frame.shape[:2], np.uint8)
            for o, m in new_masks.items():
                if m.shape != frame.shape[:2]:
                    m = cv2.resize(m, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
                new[m > 0.5] = o
                if o not in self.object_ids:
                    self.object_ids.append(o)
                self.removed.discard(o)
        ids = self.b.step(frame, new)
        if self.removed:
            ids = np.where(np.isin(ids, list(self.removed)), 0, ids).astype(np.uint8)
        if out_size and ids.shape != tuple(out_size):
            ids = cv2.resize(ids, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)
        probs = torch.zeros(1 + len(self.object_ids), *ids.shape)
        probs[0] = torch.from_numpy(ids == 0)
        for k, o in enumerate(self.object_ids):
            probs[k + 1] = torch.from_numpy(ids == o)
        return list(self.object_ids), probs
