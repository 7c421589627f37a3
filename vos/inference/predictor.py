"""Streaming propagation with a trained HODOR model.

`Propagator.step(frame, new_masks)` is the live-stream API: one frame in, its object probabilities out. It
runs the model's per-frame step (`HODOR.step`, the same one training uses): decode the frame from the stored
descriptors, force any newly given masks, re-encode the frame's descriptors, store them, drop the frame.
The tracked objects live in an `ObjectManager` and the descriptors in a `DescriptorMemory` (at most `window`
recent frames plus, with `anchor_first`, the frames where masks were given), so memory never grows with
video length.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vos.config import InferConfig
from vos.inference.memory import DescriptorMemory
from vos.inference.objects import ObjectManager
from vos.model import HODOR, Ensemble, StepOutput, force_masks
from vos.utils.device import autocast

LOCALITY_FLOOR = 1e-3  # weight of an object's probability far from where it was in the last frame


class Propagator:
    """State of one video being segmented.

    Fields:
      objects: the tracked objects (`objects.ids`: channel k + 1 of the probabilities <-> objects.ids[k]).
      memory: descriptors of recent frames and of frames where masks were given.
      frame_index: how many frames have been processed.
      last: the model's StepOutput for the last frame (stride-4 logits, probabilities, descriptors).
      locality: radius of the locality prior as a fraction of the frame's longer side (0: no prior; `_prior`).
    """

    def __init__(self, model: HODOR | Ensemble, window: int = InferConfig.window,
                 anchor_first: bool = InferConfig.anchor_first, amp: bool = InferConfig.amp,
                 locality: float = InferConfig.locality):
        # channels-last memory format: ~1.5x faster convolutions on the CPU (oneDNN), harmless on CUDA.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.device = next(model.parameters()).device
        self.amp = amp
        self.objects = ObjectManager()
        self.memory = DescriptorMemory(model.num_bg, window, anchor_first)
        self.locality = locality
        self.frame_index = 0
        self.last: StepOutput | None = None

    @property
    def object_ids(self) -> list[int]:
        return list(self.objects.ids)

    @property
    def stored_frames(self) -> int:
        return len(self.memory)

    def remove_object(self, obj: int) -> None:
        """Stop tracking `obj` from the next frame on; its descriptors leave the memory."""
        self.memory.remove_object(self.objects.remove(obj))

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
        m = self.model
        if isinstance(frame, np.ndarray):
            frame = torch.from_numpy(np.array(frame, copy=not frame.flags.writeable)).permute(2, 0, 1).float().div_(255)
        img = frame.to(self.device, non_blocking=True)[None].contiguous(memory_format=torch.channels_last)
        out_size = tuple(out_size or img.shape[-2:])
        for obj in new_masks or {}:
            self.objects.add(obj)
        n = len(self.objects)
        if n == 0:  # nothing to track (yet, or any more)
            self.frame_index += 1
            return [], torch.ones(1, *out_size, device=self.device)
        given = given_valid = full = given_rows = None
        with autocast(self.device, self.amp):
            feats = m.features(img)
            if new_masks:
                full = torch.zeros(1, n, *next(iter(new_masks.values())).shape, device=self.device)
                given_valid = torch.zeros(1, n, dtype=torch.bool, device=self.device)
                for obj, mask in new_masks.items():
                    k = self.objects.index(obj)
                    full[0, k] = torch.as_tensor(np.asarray(mask, np.float32), device=self.device)
                    given_valid[0, k] = True
                given = m.masks_to_s4(full, feats)
                given_rows = torch.zeros(n, dtype=torch.bool)  # on the host: the memory decides with it
                given_rows[[self.objects.index(obj) for obj in new_masks]] = True
            memory, memory_valid = self.memory.read(n, given_rows)
            out = m.step(feats, memory, memory_valid, given, given_valid, prior=self._prior(n))
        self.memory.add(out.desc[0], self.frame_index, given_rows)
        self.last = out
        self.frame_index += 1
        probs = m.upsample(out.probs, feats, out_size)
        if full is not None and tuple(full.shape[-2:]) == out_size:  # the given masks, exactly, at their own size
            probs = force_masks(probs, full, given_valid)
        return self.object_ids, probs[0].float()

    def _prior(self, n: int) -> torch.Tensor | None:
        """Locality prior from the last frame: an object that owned pixels there keeps its probability within
        `locality` x the frame's longer side of them and is scaled by LOCALITY_FLOOR beyond (look-alikes far away
        stay out; an object that owned no pixel may reappear anywhere). Background and objects new at this
        frame are not weighted. The decoder alone matches appearance, with no sense of where the object was."""
        if not self.locality or self.last is None or self.last.probs.shape[1] > 1 + n:  # (an object was removed)
            return None
        prev = self.last.probs
        owned = (prev.argmax(1, keepdim=True) == torch.arange(1, prev.shape[1], device=prev.device)[:, None, None]).float()
        r = max(1, round(self.locality * max(prev.shape[-2:])))
        # a (2r + 1)^2 max filter as two 1-D ones: r is ~26 cells at 288 px, where a square one took ~45 ms a frame
        near = F.max_pool2d(F.max_pool2d(owned, (1, 2 * r + 1), 1, (0, r)), (2 * r + 1, 1), 1, (r, 0))
        present = owned.flatten(2).amax(-1)[..., None, None] > 0
        w = torch.where(present, LOCALITY_FLOOR + (1 - LOCALITY_FLOOR) * near, torch.ones_like(near))
        ones = torch.ones(1, 2 + n - prev.shape[1], *prev.shape[-2:], device=prev.device)  # background, new objects
        return torch.cat([ones[:, :1], w, ones[:, 1:]], 1)


def probs_to_ids(object_ids: list[int], probs: torch.Tensor) -> np.ndarray:
    """(1 + n, H, W) probabilities -> (H, W) uint8 map of the original object ids."""
    # A running max over the few channels: torch's argmax over dim 0 is ~30x slower on the CPU.
    best, labels = probs[0], torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        labels[better] = k
        best = torch.maximum(best, probs[k])
    lut = np.array([0] + list(object_ids), np.uint8)
    return lut[labels.cpu().numpy()]
