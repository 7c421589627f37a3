"""The locality rule: an object stays near where it was in the last frame.

The decoder matches appearance only; it has no sense of where an object was, so a look-alike far away can take
it over. This inference component weights each object's decoded probability by where that object owned
pixels in the last frame: 1 within `radius` x the frame's longer side of those pixels, `floor` beyond.
Weights are kept per object id, so removing one object and giving another never hands the first one's
neighbourhood to the second. An object that owned no pixel (or is new) is not weighted: it may (re)appear
anywhere. Training never sees this rule; the issue "Identity learned in the model" is to replace it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vos.model import probs_to_labels


class LocalityPrior:
    """Fields: radius (fraction of the frame's longer side; 0 = off), floor (weight beyond the radius), near:
    object id -> (h, w) weight map from the last frame it was updated with."""

    def __init__(self, radius: float, floor: float):
        self.radius, self.floor = radius, floor
        self.near: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.near = {}

    def __call__(self, probs: torch.Tensor, object_ids: list[int]) -> torch.Tensor:
        """probs (B, 1 + n, h, w) decoded probabilities, channel k + 1 = object_ids[k] -> weighted, renormalised."""
        if not self.radius or not any(obj in self.near for obj in object_ids):
            return probs
        w = torch.ones_like(probs)
        for k, obj in enumerate(object_ids):
            if obj in self.near and self.near[obj].shape == probs.shape[-2:]:
                w[:, k + 1] = self.near[obj]
        probs = probs * w
        return probs / probs.sum(1, keepdim=True).clamp(min=1e-6)

    def update(self, probs: torch.Tensor, object_ids: list[int]) -> None:
        """Remember where each object is in this frame's final probabilities (B = 1, 1 + n, h, w)."""
        if not self.radius:
            return
        owned = (probs_to_labels(probs)[:, None] == torch.arange(1, probs.shape[1], device=probs.device)[:, None, None])
        owned = owned.float()
        r = max(1, round(self.radius * max(probs.shape[-2:])))
        # a (2r + 1)^2 max filter as two 1-D ones: r is ~26 cells at 288 px, where a square one took ~45 ms a frame
        near = F.max_pool2d(F.max_pool2d(owned, (1, 2 * r + 1), 1, (0, r)), (2 * r + 1, 1), 1, (r, 0))
        present = owned.flatten(2).amax(-1)[..., None, None] > 0  # on the device: no host sync per frame
        w = torch.where(present, self.floor + (1 - self.floor) * near, torch.ones_like(near))[0]
        self.near = {obj: w[k] for k, obj in enumerate(object_ids)}
