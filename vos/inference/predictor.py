"""Streaming propagation with a trained HODOR model.

`Propagator.step(frame, new_masks)` is the live-stream API: one frame in, its object probabilities out. It
decodes the frame from the stored descriptors of past frames, forces any newly given masks, re-encodes the
frame's descriptors from the resulting soft masks, stores them and drops the frame. Memory holds at most
`window` recent frames plus (with `anchor_first`) the frames where objects were given, so it never grows with
video length.
"""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vos.model import HODOR, logits_to_probs


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA where supported (else fp16); nothing on the CPU (no speed-up there)."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@dataclass
class _Memory:
    desc: torch.Tensor  # (Qb + n, C): background descriptors then the n objects known at that frame
    frame: int


class Propagator:
    """State of one video being segmented.

    Fields:
      object_ids: ids of the tracked objects, in the order they were first given (channel k+1 <-> object_ids[k]).
      recent: descriptors of the last `window` processed frames (oldest dropped first).
      anchors: descriptors of frames where masks were given (kept for the whole video if anchor_first).
      frame_index: how many frames have been processed.
    """

    def __init__(self, model: HODOR, window: int = 7, anchor_first: bool = True, amp: bool = True):
        # channels-last memory format: ~1.5x faster convolutions on the CPU (oneDNN), harmless on CUDA.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.device = next(model.parameters()).device
        self.window, self.anchor_first, self.amp = window, anchor_first, amp
        self.object_ids: list[int] = []
        self.recent: deque[_Memory] = deque(maxlen=window)
        self.anchors: list[_Memory] = []
        self.frame_index = 0

    @property
    def stored_frames(self) -> int:
        return len(self.recent) + len(self.anchors)

    def _memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Past descriptors padded to the current object count: (1, T, Qb + n, C) and validity (1, T, Qb + n)."""
        mem = self.anchors + [m for m in self.recent if all(m is not a for a in self.anchors)]
        q = self.model.num_bg + len(self.object_ids)
        C = mem[0].desc.shape[-1]
        desc = torch.zeros(len(mem), q, C, device=self.device, dtype=mem[0].desc.dtype)
        valid = torch.zeros(len(mem), q, dtype=torch.bool, device=self.device)
        for t, m in enumerate(mem):
            desc[t, : len(m.desc)] = m.desc
            valid[t, : len(m.desc)] = True
        return desc[None], valid[None]

    @torch.inference_mode()
    def step(self, frame: np.ndarray | torch.Tensor, new_masks: dict[int, np.ndarray] | None = None,
             out_size: tuple[int, int] | None = None) -> tuple[list[int], torch.Tensor]:
        """Process one frame.

        frame: (H, W, 3) uint8 RGB (or a float tensor (3, H, W) in [0, 1]) at the internal resolution.
        new_masks: object id -> (H, W) soft or binary mask at the same resolution, for objects given at this
            frame (new objects, or corrections of tracked ones).
        out_size: (H', W') of the returned probabilities (default: the frame's).
        Returns (object_ids, probabilities (1 + n, H', W') float32: background, then objects in object_ids order).
        """
        m = self.model
        if isinstance(frame, np.ndarray):
            frame = torch.from_numpy(np.array(frame, copy=not frame.flags.writeable)).permute(2, 0, 1).float().div_(255)
        img = frame.to(self.device, non_blocking=True)[None].contiguous(memory_format=torch.channels_last)
        H, W = img.shape[-2:]
        out_size = out_size or (H, W)
        with autocast_for(self.device, self.amp):
            feats = m.features(img)
            if self.object_ids:
                desc, valid = self._memory()
                logits = m.upsample(m.decode(feats, desc, valid), (H, W))
                probs = logits_to_probs(logits, m.num_bg)[0]
            else:
                probs = torch.ones(1, H, W, device=self.device)
            given = bool(new_masks)
            if given:
                for obj, mask in new_masks.items():
                    mk = torch.as_tensor(np.asarray(mask, np.float32), device=self.device)
                    if obj not in self.object_ids:
                        self.object_ids.append(obj)
                        probs = torch.cat([probs, torch.zeros_like(probs[:1])], 0)
                    k = 1 + self.object_ids.index(obj)
                    probs = probs * (1 - mk)  # the given object owns its pixels...
                    probs[k] = torch.maximum(probs[k], mk)
                probs = probs / probs.sum(0, keepdim=True).clamp(min=1e-6)
            if self.object_ids:
                desc_t = m.encode(feats, probs[None, 1:].to(feats.f8.dtype))[0]
                mem = _Memory(desc_t, self.frame_index)
                self.recent.append(mem)
                if given and self.anchor_first:
                    self.anchors.append(mem)
        self.frame_index += 1
        if out_size != (H, W):
            probs = F.interpolate(probs[None], size=out_size, mode="bilinear", align_corners=False)[0]
        return list(self.object_ids), probs.float()


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
