"""The Tracker: everything of inference but the network (after SAM 2's video predictor and Cutie's
inference core).

    tracker = Tracker(models, window=3)                   # one model, or several run together
    ids, probs = tracker.step(frame, {1: mask})           # the live-stream API: one frame in, probabilities out
    ids, probs = tracker.step(next_frame)
    tracker.remove_object(1)
    tracker.reset()                                       # a new pass (e.g. backwards) with the same models

Per frame it runs the two halves of the model's own step (`HODOR.step = commit(predict(...))`, exactly what
training runs): every model decodes the frame from its own descriptor memory (`predict`); with several models
their probabilities are averaged; the locality rule weights them (vos.inference.locality); then every model
forces the given masks in and re-encodes its descriptors from the SAME probabilities (`commit`), so all models
follow the same objects. The tracked objects live in an ObjectManager, each model's descriptors in its own
DescriptorMemory (at most `window` recent frames plus, with `anchor_first`, the frames where masks were given),
so memory never grows with the video's length.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import torch

from vos.config import InferConfig
from vos.inference.locality import LocalityPrior
from vos.inference.memory import DescriptorMemory
from vos.inference.objects import ObjectManager
from vos.model import HODOR, StepOutput, force_masks, probs_to_labels
from vos.model.short_term import LastFrame
from vos.utils.device import autocast


class Tracker:
    """State of one video being segmented.

    Fields:
      models: the loaded models (one, or several run together; they must share bg_grid). Put them in the
        channels-last memory format once, before (Runner does): ~1.5x faster convolutions on the CPU.
      adapted: models fine-tuned to this video (test-time adaptation, vos.adapt) that replace `models` while
        set (None: not adapted). `use_adapted` sets them.
      objects: the tracked objects (`objects.ids`: channel k + 1 of the probabilities <-> objects.ids[k]).
      memories: one DescriptorMemory per model in use: descriptors of recent frames and of frames where masks
        were given.
      lasts: per model in use, the last frame's `StepOutput.last` (its keys and final masks, for the model's
        short-term path; None for a model without one, and before the first frame).
      given_frames: per model in use, the `StepOutput.last` of every frame where masks were given (what a
        short-term path with `given_topk` reads, all of them as one set of pixels; training has one given frame a
        clip). Objects tracked at such a frame but not given there carry their predicted masks.
      pixel_memory: per model in use, the `StepOutput.last` of every `pixel_memory_every`-th frame (the last
        `pixel_memory_frames` of them), which the read sees beside the given frames: what the objects look like
        lately, with their predicted masks (XMem's working memory; empty with pixel_memory_every 0).
      locality: the locality rule (LocalityPrior; radius 0 = off).
      dtype: autocast dtype of the forward passes (None = fp32); inference picks it with vos.utils.precision.
      frame_index: how many frames have been processed since the last reset.
      last: the last frame's StepOutput (stride-4 probabilities after forcing; logits and descriptors of the
        first model, logits None with several models).
    """

    def __init__(self, models: Sequence[HODOR], window: int = InferConfig.window,
                 anchor_first: bool = InferConfig.anchor_first, locality: float = InferConfig.locality,
                 locality_floor: float = InferConfig.locality_floor, dtype: torch.dtype | None = None,
                 pixel_memory_every: int = InferConfig.pixel_memory_every,
                 pixel_memory_frames: int = InferConfig.pixel_memory_frames):
        if not models:
            raise ValueError("a Tracker needs at least one model")
        if len({m.num_bg for m in models}) > 1:
            raise ValueError("models that run together must share bg_grid")
        self.models = [m.eval() for m in models]
        self.adapted: list[HODOR] | None = None
        self.device = next(models[0].parameters()).device
        self.window, self.anchor_first, self.dtype = window, anchor_first, dtype
        self.pixel_memory_every, self.pixel_memory_frames = pixel_memory_every, pixel_memory_frames
        self.locality = LocalityPrior(locality, locality_floor)
        self.reset()

    @classmethod
    def from_config(cls, models: Sequence[HODOR], cfg, dtype: torch.dtype | None = None) -> "Tracker":
        """cfg: an InferConfig."""
        return cls(models, cfg.window, cfg.anchor_first, cfg.locality, cfg.locality_floor, dtype,
                   cfg.pixel_memory_every, cfg.pixel_memory_frames)

    @property
    def active(self) -> list[HODOR]:
        """The models that run: the adapted ones when set, else the loaded ones."""
        return self.adapted or self.models

    def use_adapted(self, models: Sequence[HODOR] | None) -> None:
        """Run `models` (fine-tuned copies of `models`, one each) instead of the loaded ones; None: back to the
        loaded ones. Starts a new pass."""
        if models is not None and len(models) != len(self.models):
            raise ValueError(f"{len(models)} adapted models for {len(self.models)} loaded ones")
        self.adapted = None if models is None else [m.eval() for m in models]
        self.reset()

    def reset(self) -> None:
        """Forget the objects, the memories and the last frame (a new pass over a video); keep the models."""
        self.objects = ObjectManager()
        self.memories = [DescriptorMemory(m.num_bg, self.window, self.anchor_first) for m in self.active]
        self.lasts: list = [None] * len(self.active)
        self.given_frames: list[list] = [[] for _ in self.active]
        self.pixel_memory: list[deque] = [deque(maxlen=self.pixel_memory_frames) for _ in self.active]
        self.locality.reset()
        self.frame_index = 0
        self.last: StepOutput | None = None

    @property
    def object_ids(self) -> list[int]:
        return list(self.objects.ids)

    @property
    def stored_frames(self) -> int:
        return len(self.memories[0])

    def remove_object(self, obj: int) -> None:
        """Stop tracking `obj` from the next frame on; its descriptors leave the memories."""
        k = self.objects.remove(obj)
        for mem in self.memories:
            mem.remove_object(k)
        frames = self.lasts + [f for kept in self.given_frames + self.pixel_memory for f in kept]
        for last in {id(f): f for f in frames}.values():  # the same frame may be both
            if last is not None and last.masks.shape[1] > k + 1:
                last.masks = torch.cat([last.masks[:, : k + 1], last.masks[:, k + 2:]], 1)
        self.locality.near.pop(obj, None)

    @torch.inference_mode()
    def step(self, frame: np.ndarray | torch.Tensor, new_masks: dict[int, np.ndarray] | None = None,
             out_size: tuple[int, int] | None = None) -> tuple[list[int], torch.Tensor]:
        """Process one frame.

        frame: (H, W, 3) uint8 RGB (or a float tensor (3, H, W) in [0, 1]) at the internal resolution.
        new_masks: object id -> soft or binary mask covering the frame, at any resolution (e.g. the video's
            native one), for objects given at this frame (new objects, or corrections of tracked ones).
        out_size: (H', W') of the returned probabilities (default: the frame's).
        Returns (object_ids, probabilities (1 + n, H', W') float32: background, then objects in object_ids order).
        """
        models = self.active
        if isinstance(frame, np.ndarray):
            frame = torch.from_numpy(np.array(frame, copy=not frame.flags.writeable)).permute(2, 0, 1).float().div_(255)
        img = frame.to(self.device, non_blocking=True)[None].contiguous(memory_format=torch.channels_last)
        out_size = tuple(out_size or img.shape[-2:])
        for obj in new_masks or {}:
            self.objects.add(obj)
        n, ids = len(self.objects), self.object_ids
        if n == 0:  # nothing to track (yet, or any more)
            self.frame_index += 1
            return [], torch.ones(1, *out_size, device=self.device)
        given = given_valid = full = given_rows = None
        with autocast(self.device, self.dtype):
            feats = [m.features(img) for m in models]
            if new_masks:
                full = torch.zeros(1, n, *next(iter(new_masks.values())).shape, device=self.device)
                given_valid = torch.zeros(1, n, dtype=torch.bool, device=self.device)
                for obj, mask in new_masks.items():
                    k = self.objects.index(obj)
                    full[0, k] = torch.as_tensor(np.asarray(mask, np.float32), device=self.device)
                    given_valid[0, k] = True
                given = models[0].masks_to_s4(full, feats[0])  # every HODOR pads and strides the same way
                given_rows = torch.zeros(n, dtype=torch.bool)  # on the host: the memory decides with it
                given_rows[[self.objects.index(obj) for obj in new_masks]] = True
            decoded = [m.predict(f, *mem.read(n, given_rows), n, last, given_frame)
                       for m, f, mem, last, given_frame in zip(
                           models, feats, self.memories, self.lasts,
                           (LastFrame.concat(g + list(p), n) for g, p in zip(self.given_frames, self.pixel_memory)))]
            probs = torch.stack([d[1] for d in decoded]).mean(0) if len(models) > 1 else decoded[0][1]
            probs = self.locality(probs, ids)
            committed = [m.commit(f, probs, given, given_valid) for m, f in zip(models, feats)]
        for mem, (_, desc) in zip(self.memories, committed):
            mem.add(desc[0], self.frame_index, given_rows)
        probs = committed[0][0]
        self.lasts = [m.remember(f, probs) for m, f in zip(models, feats)]
        if new_masks:
            for given, last in zip(self.given_frames, self.lasts):
                if last is not None:
                    given.append(last)
        elif self.pixel_memory_every and self.frame_index % self.pixel_memory_every == 0:
            for kept, last in zip(self.pixel_memory, self.lasts):
                if last is not None:
                    kept.append(last)
        self.locality.update(probs, ids)
        self.last = StepOutput(decoded[0][0] if len(models) == 1 else None, probs, committed[0][1],
                               presence=decoded[0][2] if len(models) == 1 else None)
        self.frame_index += 1
        probs = models[0].output_probs(probs, feats[0], out_size)
        if full is not None and tuple(full.shape[-2:]) == out_size:  # the given masks, exactly, at their own size
            probs = force_masks(probs, full, given_valid)
        return ids, probs[0].float()


def probs_to_ids(object_ids: list[int], probs: torch.Tensor) -> np.ndarray:
    """(1 + n, H, W) probabilities -> (H, W) uint8 map of the original object ids."""
    labels = probs_to_labels(probs, 0)
    lut = np.array([0] + list(object_ids), np.uint8)
    return lut[labels.cpu().numpy()]
