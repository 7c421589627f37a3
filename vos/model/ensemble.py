"""Several trained HODOR models of one architecture run as one model (an inference-time ensemble).

Runs of one recipe that differ only in their seed disagree by several J&F points per video; averaging their
predictions is steadier than any one of them. Each member decodes the frame from its own descriptors, the
members' probabilities are averaged, and every member re-encodes its descriptors from the AVERAGED masks, so
all members follow the same objects from frame to frame. A frame's descriptors are the members' descriptors
concatenated along the channels, so the inference memory stores one tensor per frame as for a single model.
"""

from __future__ import annotations

import torch
from torch import nn

from vos.model.hodor import HODOR, Features, StepOutput


class Ensemble(nn.Module):
    """The per-frame interface of HODOR (features, masks_to_s4, step, upsample, num_bg) over several members; a
    frame's features are a list, one Features per member."""

    def __init__(self, members: list[HODOR]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        first = members[0]
        for m in members[1:]:
            if (m.num_bg, m.cfg.channels, m.cfg.mask_channels) != (first.num_bg, first.cfg.channels,
                                                                    first.cfg.mask_channels):
                raise ValueError("ensemble members must share bg_grid, channels and mask_channels")
        self.members = nn.ModuleList(members)
        self.num_bg = first.num_bg

    @torch.no_grad()
    def fuse_for_inference(self) -> "Ensemble":
        for m in self.members:
            m.fuse_for_inference()
        return self

    def features(self, images: torch.Tensor) -> list[Features]:
        return [m.features(images) for m in self.members]

    def masks_to_s4(self, masks: torch.Tensor, feats: list[Features]) -> torch.Tensor:
        return self.members[0].masks_to_s4(masks, feats[0])

    def upsample(self, x: torch.Tensor, feats: list[Features], size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.members[0].upsample(x, feats[0], size)

    def step(self, feats: list[Features], memory: torch.Tensor | None = None,
             memory_valid: torch.Tensor | None = None, given: torch.Tensor | None = None,
             given_valid: torch.Tensor | None = None, valid: torch.Tensor | None = None, encode: bool = True,
             prior: torch.Tensor | None = None) -> StepOutput:
        """HODOR.step over the members (same arguments; memory's channels are the members' concatenated).
        Returns the averaged probabilities, the members' descriptors concatenated, and logits None (the members'
        logits have no common meaning)."""
        mems = [None] * len(self.members) if memory is None else memory.chunk(len(self.members), -1)
        probs = torch.stack([m.step(f, mem, memory_valid, given, given_valid, encode=False, prior=prior).probs
                             for m, f, mem in zip(self.members, feats, mems)]).mean(0)
        if not encode:
            return StepOutput(None, probs, None)
        desc = torch.cat([m.encode(f, probs[:, 1:], valid) for m, f in zip(self.members, feats)], -1)
        return StepOutput(None, probs, desc)
