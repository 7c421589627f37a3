"""A video session in the spirit of SAM 2's video predictor:

    session = VideoSession(tracker, frames)                 # a Tracker (or a baseline); frames: a FrameSource
    session.add_mask(frame_index, ids)                      # ids: (H, W) uint8 object-id map at native size
    session.remove_object(obj_id, frame_index=None)         # forget an object (everywhere, or from a frame on)
    for t, object_ids, probs in session.propagate():        # a generator, one frame at a time
        ...

Masks may be added for any frame before propagating (objects may first appear late, as in YouTube-VOS).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import numpy as np
import torch

from vos.data import FrameSource, object_ids as ids_in
from vos.utils import VosError


class VideoSession:
    """Fields:
      frames: the frame source, decoded at the model's internal resolution.
      out_size: (H, W) of the input video; masks are given and outputs come back at this size.
      prompts: frame index -> {object id: (H, W) float32 0/1 mask at out_size}. The model resamples them once.
      removals: frame index -> object ids that stop being tracked at that frame.
      tracker: the per-frame stepper (a Tracker, or a baseline with the same step/remove_object/reset methods);
        each propagation starts it afresh with `reset()`.
      adapt: test-time adaptation (vos.adapt.Adaptation; None = off): called with the session by the first
        propagate() after the prompts changed; it hands the tracker models fine-tuned on the prompts and returns
        the seconds it took. Inference knows nothing of training: the Runner (vos.adapt.runner) sets it.
      adapt_seconds: what the last adaptation took (0 when none ran).
    """

    def __init__(self, tracker, frames: FrameSource, out_size: tuple[int, int] | None = None,
                 adapt: Callable[["VideoSession"], float] | None = None):
        self.tracker, self.frames, self.adapt = tracker, frames, adapt
        self.out_size = tuple(out_size or frames.native_size)
        self.prompts: dict[int, dict[int, np.ndarray]] = {}
        self.removals: dict[int, set[int]] = {}
        self.adapt_seconds = 0.0
        self._adapted_to: tuple | None = None  # the prompts the tracker's models were adapted to

    def _prompt_key(self) -> tuple:
        return tuple((t, o, hashlib.sha1(m.tobytes()).hexdigest())
                     for t, masks in sorted(self.prompts.items()) for o, m in sorted(masks.items()))

    def _check_frame(self, frame_index: int) -> None:
        if not 0 <= frame_index < len(self.frames):
            raise VosError(f"frame index {frame_index} outside the video (0..{len(self.frames) - 1})")

    def add_mask(self, frame_index: int, ids: np.ndarray, void: int | None = 255) -> list[int]:
        """Add every object of an id map (native resolution) at `frame_index`; returns the ids added."""
        self._check_frame(frame_index)
        if ids.shape != self.out_size:
            raise VosError(f"mask at frame {frame_index} is {ids.shape[1]}x{ids.shape[0]} but the video is "
                           f"{self.out_size[1]}x{self.out_size[0]}")
        objs = ids_in(ids, void)
        if not objs:
            raise VosError(f"the mask for frame {self.frames.names[frame_index]} is empty: it has no object pixels")
        for o in objs:
            self.prompts.setdefault(frame_index, {})[o] = (ids == o).astype(np.float32)
        return objs

    def remove_object(self, obj: int, frame_index: int | None = None) -> None:
        """frame_index None: forget `obj` entirely (all its prompts). Otherwise: stop tracking it from that frame
        on (its later prompts are dropped; earlier outputs keep it)."""
        if not any(obj in p for p in self.prompts.values()):
            raise VosError(f"object {obj} was never given (objects: {sorted({o for p in self.prompts.values() for o in p})})")
        if frame_index is not None:
            self._check_frame(frame_index)
            self.removals.setdefault(frame_index, set()).add(obj)
        for t in list(self.prompts):
            if frame_index is None or t >= frame_index:
                self.prompts[t].pop(obj, None)
                if not self.prompts[t]:
                    del self.prompts[t]

    def propagate(self, start: int | None = None, reverse: bool = False) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Yield (frame index, object ids, probabilities (1 + n, H, W) at out_size), one frame at a time.

        Forward (default): from `start` (default: the first prompted frame) to the last frame; prompts are used
        as their frames come (new objects join, re-given ones are corrected). reverse=True: from `start` (default:
        the first prompted frame) back to frame 0, the same way in the other direction (SAM 2's
        propagate_in_video(reverse=True)); together the two passes cover a video annotated mid-way.
        """
        if not self.prompts:
            raise VosError("add a mask for at least one frame before propagating")
        if self.adapt is not None and (key := self._prompt_key()) != self._adapted_to:
            self.adapt_seconds = self.adapt(self)
            self._adapted_to = key
        stepper = self.tracker
        stepper.reset()
        first = min(self.prompts) if start is None else start
        frames = self.frames.backwards(first) if reverse else ((t, self.frames[t]) for t in range(first, len(self.frames)))
        for t, frame in frames:
            if not reverse:  # removals are "from this frame on"
                for obj in self.removals.get(t, ()):
                    if obj in stepper.object_ids:
                        stepper.remove_object(obj)
            ids, probs = stepper.step(frame, self.prompts.get(t), out_size=self.out_size)
            yield t, ids, probs
