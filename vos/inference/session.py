"""A video session in the spirit of SAM 2's video predictor:

    session = VideoSession(propagator_factory, frames)     # frames: a FrameSource (video file or folder)
    session.add_mask(frame_index, ids)                      # ids: (H, W) uint8 object-id map at native size
    for t, object_ids, probs in session.propagate():        # a generator, one frame at a time
        ...

Masks may be added for any frame before propagating (objects may first appear late, as in YouTube-VOS).
"""

from __future__ import annotations

from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from vos.data import FrameSource, object_ids as ids_in
from vos.utils import VosError


class VideoSession:
    """Fields:
      frames: the frame source, decoded at the model's internal resolution.
      out_size: (H, W) of the input video; outputs come back at this size.
      prompts: frame index -> {object id: (H, W) float mask at the internal resolution}.
      make_stepper: builds a fresh per-frame stepper (a model Propagator or a baseline) for each propagation.
    """

    def __init__(self, make_stepper: Callable, frames: FrameSource, out_size: tuple[int, int] | None = None):
        self.make_stepper, self.frames = make_stepper, frames
        self.out_size = tuple(out_size or getattr(frames, "native_size", frames.size))
        self.prompts: dict[int, dict[int, np.ndarray]] = {}

    def add_mask(self, frame_index: int, ids: np.ndarray, void: int | None = 255) -> list[int]:
        """Add every object of an id map (native resolution) at `frame_index`; returns the ids added."""
        if not 0 <= frame_index < len(self.frames):
            raise VosError(f"frame index {frame_index} outside the video (0..{len(self.frames) - 1})")
        if ids.shape != self.out_size:
            raise VosError(f"mask at frame {frame_index} is {ids.shape[1]}x{ids.shape[0]} but the video is "
                           f"{self.out_size[1]}x{self.out_size[0]}")
        objs = ids_in(ids, void)
        if not objs:
            raise VosError(f"the mask for frame {self.frames.names[frame_index]} is empty: it has no object pixels")
        h, w = self.frames.size
        for o in objs:
            m = (ids == o).astype(np.float32)
            if (h, w) != self.out_size:
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
            self.prompts.setdefault(frame_index, {})[o] = m
        return objs

    def propagate(self, start: int | None = None) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Yield (frame index, object ids, probabilities (1 + n, H, W) at the input size) from the first
        prompted frame to the end. Frames before the first prompt get no output."""
        if not self.prompts:
            raise VosError("add a mask for at least one frame before propagating")
        stepper = self.make_stepper()
        first = min(self.prompts) if start is None else start
        for t in range(first, len(self.frames)):
            ids, probs = stepper.step(self.frames[t], self.prompts.get(t), out_size=self.out_size)
            yield t, ids, probs


class BaselineStepper:
    """Adapts a numpy baseline (copy, flow) to the Propagator.step interface, at native resolution."""

    def __init__(self, baseline):
        self.b = baseline
        self.object_ids: list[int] = []

    def step(self, frame, new_masks=None, out_size=None):
        new = None
        if new_masks:
            new = np.zeros(frame.shape[:2], np.uint8)
            for o, m in new_masks.items():
                if m.shape != frame.shape[:2]:
                    m = cv2.resize(m, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
                new[m > 0.5] = o
                if o not in self.object_ids:
                    self.object_ids.append(o)
        ids = self.b.step(frame, new)
        if out_size and ids.shape != tuple(out_size):
            ids = cv2.resize(ids, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)
        probs = torch.zeros(1 + len(self.object_ids), *ids.shape)
        probs[0] = torch.from_numpy(ids == 0)
        for k, o in enumerate(self.object_ids):
            probs[k + 1] = torch.from_numpy(ids == o)
        return list(self.object_ids), probs
