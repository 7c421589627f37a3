"""The descriptor memory of one video (after Cutie's memory_manager): what the decoder attends to.

It holds the descriptors of the last `window` processed frames and, with `keep_anchors`, those of every
frame where masks were given (the anchors), so it never grows with the video's length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class Entry:
    desc: torch.Tensor  # (Qb + n, C): background descriptors, then the n objects known at that frame
    frame: int


class DescriptorMemory:
    def __init__(self, num_bg: int, window: int = 7, keep_anchors: bool = True):
        self.num_bg, self.keep_anchors = num_bg, keep_anchors
        self.recent: deque[Entry] = deque(maxlen=window)
        self.anchors: list[Entry] = []

    def __len__(self) -> int:
        """Frames whose descriptors are stored."""
        return len(self.entries())

    def entries(self) -> list[Entry]:
        """Anchors (oldest first), then recent frames (oldest first), each once."""
        return self.anchors + [e for e in self.recent if all(e is not a for a in self.anchors)]

    def add(self, desc: torch.Tensor, frame: int, anchor: bool) -> None:
        e = Entry(desc, frame)
        self.recent.append(e)
        if anchor and self.keep_anchors:
            self.anchors.append(e)

    def read(self, num_objects: int) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(1, T, Qb + num_objects, C) descriptors and (1, T, Qb + num_objects) validity; entries from before an
        object was added are padded (invalid) for it, and so are their background descriptors. (None, None)
        when empty."""
        mem = self.entries()
        if not mem:
            return None, None
        q = self.num_bg + num_objects
        ref = mem[0].desc
        desc = torch.zeros(len(mem), q, ref.shape[-1], device=ref.device, dtype=ref.dtype)
        valid = torch.zeros(len(mem), q, dtype=torch.bool, device=ref.device)
        for t, e in enumerate(mem):
            desc[t, : len(e.desc)] = e.desc
            valid[t, : len(e.desc)] = True
            if len(e.desc) < q:
                # This frame predates an object: its background descriptors were encoded with that object's
                # pixels as background and would claim them (the decoder takes the max over frames).
                valid[t, : self.num_bg] = False
        return desc[None], valid[None]

    def remove_object(self, k: int) -> None:
        """Drop the descriptors of the k-th object (0-based) from every stored frame."""
        row = self.num_bg + k
        for e in {id(e): e for e in self.entries()}.values():
            if len(e.desc) > row:
                e.desc = torch.cat([e.desc[:row], e.desc[row + 1:]])
