"""HODOR's training cycles with a path cache, and the loss.

A node is the descriptors of one frame: "0" (encoded from the ground-truth mask of the annotated frame 0) or
a prediction (sources, target): frame `target` decoded from the descriptors of the `sources` nodes, then
re-encoded on that frame from its predicted soft masks. Nodes are cached, so every forward step is computed
once per iteration even when several cycles share it.

Cycles: [0]->0 and [0]->1->0 every iteration; with long cycles, odd iterations add either
[0]->1->2->1->0 or [0]->1, [0,1]->2, 2->1, [1,2]->0 (alternating).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vos.model import Features, logits_to_probs, merged_logits

GT = "0"


def node_frames(node) -> set[int]:
    """Frames whose masks feed a node, along the whole path."""
    if node == GT:
        return {0}
    sources, target = node
    return {target}.union(*(node_frames(s) for s in sources))


def cycle_paths(iteration: int, long_cycles: bool) -> list[tuple]:
    """The (sources, target) decodes whose predictions are supervised this iteration."""
    n1 = ((GT,), 1)
    paths = [((GT,), 0), ((n1,), 0), n1]
    if long_cycles and iteration % 2 == 1:
        if iteration % 4 == 1:  # [0]->1->2->1->0
            n2 = ((n1,), 2)
            n1b = ((n2,), 1)
            paths += [n2, n1b, ((n1b,), 0)]
        else:  # [0]->1, [0,1]->2, 2->1, [1,2]->0
            n2 = ((GT, n1), 2)
            n1c = ((n2,), 1)
            paths += [n2, n1c, ((n1c, n2), 0)]
    return paths


def dice_loss(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """probs, target (B, K, H, W) for the objects only (background excluded); valid (B, K)."""
    inter = (probs * target).flatten(2).sum(-1)
    denom = probs.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    d = 1 - (2 * inter + 1) / (denom + 1)
    return (d * valid).sum() / valid.sum().clamp(min=1)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, num_bg: int) -> torch.Tensor:
    """Cross-entropy + Dice at full resolution. logits (B, 1 + Qb + K, H, W); target (B, K, H, W) one-hot."""
    merged = merged_logits(logits, num_bg).float()
    labels = torch.where(target.sum(1) > 0, target.argmax(1) + 1, torch.zeros_like(target[:, 0], dtype=torch.long))
    ce = F.cross_entropy(merged, labels)
    probs = merged.softmax(1)[:, 1:]
    return ce + dice_loss(probs, target, valid.float())


class CycleModel(nn.Module):
    """Wraps HODOR so that one forward() computes all cycle losses of a batch (what DDP needs to wrap)."""

    def __init__(self, model: nn.Module, detach_masks: bool, long_cycles: bool):
        super().__init__()
        self.model, self.detach_masks, self.long_cycles = model, detach_masks, long_cycles

    def forward(self, batch: dict, iteration: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        m = self.model
        images, masks, valid, has = batch["images"], batch["masks"], batch["valid"], batch["has_mask"]
        B, T, _, H, W = images.shape
        f = m.features(images.flatten(0, 1))
        feats = [Features(f.f4.view(B, T, *f.f4.shape[1:])[:, t], f.f8.view(B, T, *f.f8.shape[1:])[:, t], (H, W))
                 for t in range(T)]
        present = masks.flatten(3).amax(-1) > 0  # (B, T, K); unknown frames (no mask) count as present
        present = present | ~has[:, :, None]
        q_valid = torch.cat([torch.ones(B, m.num_bg, dtype=torch.bool, device=valid.device), valid], 1)
        desc_cache: dict = {}
        logit_cache: dict = {}

        def logits(node):
            if node not in logit_cache:
                sources, target = node
                d = torch.stack([desc(s) for s in sources], 1)
                logit_cache[node] = m.decode(feats[target], d, q_valid[:, None].expand(-1, len(sources), -1))
            return logit_cache[node]

        def desc(node):
            if node not in desc_cache:
                if node == GT:
                    desc_cache[node] = m.encode(feats[0], masks[:, 0], valid)
                else:
                    p = logits_to_probs(logits(node), m.num_bg)[:, 1:]
                    if self.detach_masks:
                        p = p.detach()
                    desc_cache[node] = m.encode(feats[node[1]], p.to(feats[0].f8.dtype), valid, stride=4)
            return desc_cache[node]

        losses: dict[str, torch.Tensor] = {}
        outputs = {}
        for path in cycle_paths(iteration, self.long_cycles):
            target = path[1]
            sup = has[:, target]
            if not sup.any():
                continue  # sparse regime: frames without masks get no loss
            frames = sorted(set().union(*(node_frames(s) for s in path[0])))
            in_path = present[:, frames].any(1) & valid  # objects absent from every source frame -> background
            tgt = masks[:, target] * in_path[:, :, None, None]
            lg = m.upsample(logits(path), (H, W))
            l = mask_loss(lg[sup], tgt[sup], valid[sup], m.num_bg)
            losses[name_of(path)] = l
            outputs[name_of(path)] = lg.detach()
        total = sum(losses.values()) / len(losses)
        return total, losses, outputs


def name_of(node) -> str:
    if node == GT:
        return "0"
    sources, target = node
    src = ",".join(name_of(s) for s in sources)
    return f"[{src}]>{target}" if len(sources) > 1 else f"{src}>{target}"
