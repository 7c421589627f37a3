"""The descriptor memory of one video (after Cutie's memory_manager): what the decoder attends to.

It holds the descriptors of the last `window` processed frames and, with `keep_anchors`, those of every
frame where masks were given (the anchors), so it never grows with the video's length. An anchor is kept for
what was GIVEN there: once it leaves the recent window, only its background and the objects given at that frame
stay; the other objects' rows there are predictions, no better than any other frame's, and age out with them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class Entry:
    desc: torch.Tensor  # (Qb + n, C): background descriptors, then the n objects known at that frame
    frame: int
    objects: torch.Tensor | None = None  # (n,) bool: which object rows are valid (None: all)


class DescriptorMemory:
    def __init__(self, num_bg: int, window: int = 7, keep_anchors: bool = True):
        self.num_bg, self.keep_anchors = num_bg, keep_anchors
        self.recent: deque[Entry] = deque(maxlen=window)
        self.anchors: list[Entry] = []

    def __len__(self) -> int:
        """Frames whose descriptors are stored."""
        return len(self.entries())

    def entries(self) -> list[Entry]:
        """Anchors that left the recent window (oldest first), then the recent frames (oldest first)."""
        recent = {e.frame for e in self.recent}
        return [a for a in self.anchors if a.frame not in recent] + list(self.recent)

    def add(self, desc: torch.Tensor, frame: int, given: torch.Tensor | None = None) -> None:
        """Store a frame's descriptors. given: (n,) bool, the objects whose masks were given at this frame (None:
        none); such a frame becomes an anchor for those objects."""
        self.recent.append(Entry(desc, frame))
        if given is not None and self.keep_anchors:
            self.anchors.append(Entry(desc, frame, given.to(desc.device)))

    def read(self, num_objects: int, given: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(1, T, Qb + num_objects, C) descriptors and (1, T, Qb + num_objects) validity; entries from before an
        object was added are padded (invalid) for it, and so are their background descriptors, unless every
        object they lack is given (`given`: (num_objects,) bool, on the host) at the frame being decoded. (None, None)
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
            if e.objects is not None:
                valid[t, self.num_bg: len(e.desc)] = e.objects
            if len(e.desc) < q and not (given is not None and bool(given[len(e.desc) - self.num_bg:].all())):
                # This frame predates an object: its background descriptors were encoded with that object's
                # pixels as background and would claim them (the decoder takes the max over frames). Where that
                # object is given, its mask is forced in anyway, and without background the others would
                # take every pixel.
                valid[t, : self.num_bg] = False
        return desc[None], valid[None]

    def remove_object(self, k: int) -> None:
        """Drop the descriptors of the k-th object (0-based) from every stored frame."""
        row = self.num_bg + k
        for e in self.anchors + list(self.recent):
            if len(e.desc) > row:
                e.desc = torch.cat([e.desc[:row], e.desc[row + 1:]])
                if e.objects is not None:
                    e.objects = torch.cat([e.objects[:k], e.objects[k + 1:]])
